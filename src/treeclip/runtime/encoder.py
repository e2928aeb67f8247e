"""Image embeddings of a model at the precision the policy chose (`runtime.precision`):
fp32 (exact), a bf16 copy of the image tower, or the tower exported to ONNX Runtime with
dynamic int8 quantization (cached in `CachePaths.onnx`, keyed by model fingerprint,
library versions and `ONNX_FORMAT`).

On a CPU the tower runs as open_clip's own module (fp32 and bf16; `runtime.vit.FastVisual`,
a rewrite of it, gained only 1.02-1.08x there: benchmarks/text_and_vit_paths.py, and is
kept for the int8 export's graph), one image per model call, each call on one thread, with
`streams` calls running side by side on threads of their own (each set to one torch
thread once, when it starts: the caller's thread count is never touched). So an image's embedding
never depends on its batch mates, the batch size, the thread count or the process count:
resumed runs and torchrun splits give the same bits as one run (a batched fp32 product's
bits depend on its row count and its threads). One thread per call also saves
synchronising threads inside every product (measured: 2 one-thread streams ran ViT-B-16
1.5x faster than one two-thread stream on 2 loaded cores), and one image per call costs no
throughput (fp32, one thread, CPU s/image: 0.573 at 1 image per call, 0.585 at 4).

bf16 and int8 are not exact: their top-1 agreement with fp32 is tested on a trained model
and measured by benchmarks/predict_benchmark.py. The text tower is never touched: label
embeddings are computed in fp32 and cached.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from treeclip.cache import CachePaths, caches_or_default
from treeclip.errors import TreeclipError
from treeclip.log import get_logger
from treeclip.runtime.precision import resolve_device, resolve_precision
from treeclip.runtime.vit import fast_visual

log = get_logger(__name__)

ONNX_FORMAT = 3
"""Format version of the exported graphs; part of their cache key (2: the class-token-only
`FastVisual` graph; 3: its patch embedding as a product)."""


class ImageEncoder:
    """Image embeddings of a `ClipModel` at a chosen precision and device.

    bf16 keeps a bf16 copy of the image tower only (the output is read back as fp32);
    fp32 on the model's own device shares the model's weights. The caller's model is
    never changed. `precision` is the concrete one that runs (`fp32`, `bf16`, `int8`).
    `streams`: model calls run side by side on a CPU (default: torch's thread count)."""

    def __init__(self, clip, *, device: str | None = "cpu", precision: str = "auto",
                 compile: bool = False, caches: CachePaths | None = None,
                 streams: int | None = None, backend: str = "auto") -> None:
        self.clip = clip
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = torch.float32
        self.streams = max(1, streams or torch.get_num_threads())
        self.backend = "torch"
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        caches = caches_or_default(caches)
        if self.precision == "int8" and self._use_int8(caches, checked=precision != "int8"):
            return
        if self._use_onnx_fp32(caches, backend, compile):
            return
        visual = clip.model.visual
        if self.precision == "bf16" or self.device != clip.device:
            visual = copy.deepcopy(visual)
        visual = visual.to(self.device).eval()
        if self.precision == "bf16":
            visual = visual.to(torch.bfloat16)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.visual = torch.compile(visual) if compile else visual

    def _use_int8(self, caches: CachePaths, *, checked: bool) -> bool:
        """Run the int8 graph; when the policy chose it (`checked`), only if its embeddings
        hold (`backends.int8_holds`), else the next precision the policy allows."""
        from treeclip.runtime import backends
        from treeclip.runtime.precision import cpu_features

        try:
            int8 = OnnxVisual(self.clip, "int8", caches)
        except Exception as e:
            if not checked:
                raise
            # "fast" chose int8 but this model does not export: fall back to exact fp32
            log.warning(f"int8 path unavailable for {self.clip.name} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:100]}); using fp32")
            self.precision = "fp32"
            return False
        if checked:
            check = self._measured(caches, "int8", lambda: backends.int8_holds(
                self._fp32_tower(), int8, backends.calibration_pixels(self.clip)))
            if not check["holds"]:
                self.precision = "bf16" if cpu_features().native_bf16 else "fp32"
                log.warning(f"the int8 graph of {self.clip.name} is off fp32 (min cosine {check['min_cosine']:.4f} "
                            f"on calibration images); using {self.precision}")
                return False
        self.visual: Callable = int8
        self.backend = "onnxruntime"
        return True

    def _use_onnx_fp32(self, caches: CachePaths, backend: str, compile: bool) -> bool:
        """Run fp32 through ONNX Runtime when asked, or (`auto`) when it measured faster
        than torch at the exact path's bar on this CPU (`runtime.backends`)."""
        from treeclip.runtime import backends
        from treeclip.runtime.precision import onnxruntime_available

        if self.precision != "fp32" or self.device.type != "cpu" or compile or backend == "torch":
            return False
        if backend == "auto":
            if not onnxruntime_available():
                return False
            candidates = {"onnxruntime": lambda: OnnxVisual(self.clip, "fp32", caches)}
            backend = self._measured(caches, "fp32", lambda: backends.choose_fp32(
                self._fp32_tower(), candidates, backends.calibration_pixels(self.clip)))["backend"]
        if backend != "onnxruntime":
            return False
        self.visual = OnnxVisual(self.clip, "fp32", caches)
        self.backend = "onnxruntime"
        return True

    def _fp32_tower(self) -> Callable:
        """open_clip's fp32 image tower on the CPU (the model's own weights, or a copy)."""
        visual = self.clip.model.visual
        return visual.eval() if self.clip.device.type == "cpu" else copy.deepcopy(visual).cpu().eval()

    def _measured(self, caches: CachePaths, precision: str, measure: Callable[[], dict]) -> dict:
        """A backend measurement of this model, from the record when made before."""
        from treeclip.runtime.backends import BackendRecords, record_key

        records, key = BackendRecords(caches.onnx), record_key(self.clip, precision)
        found = records.get(key)
        if found is None:
            found = measure()
            records.put(key, found)
        return found

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """(N, 3, H, W) preprocessed pixels -> (N, dim) float32 embeddings on the CPU.
        On a GPU the batch runs whole; on a CPU one image per call (see the module doc)."""
        if self.device.type != "cpu":
            feats = self._run(pixels)
        elif len(pixels):
            feats = torch.cat(self._map(list(pixels.split(1))))
        else:
            feats = torch.zeros(0, self.clip.embed_dim)
        return (F.normalize(feats, dim=-1) if normalize else feats).cpu()

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = pixels.to(self.device, dtype=self.dtype, non_blocking=True)
            return self.visual(x).float()

    def _map(self, calls: list[torch.Tensor]) -> list[torch.Tensor]:
        if threading.current_thread().name.startswith("treeclip-model"):  # already a one-thread stream
            return [self._run(c) for c in calls]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="treeclip-model",
                                                initializer=torch.set_num_threads, initargs=(1,))
        return list(self._pool.map(self._run, calls))

    def close(self) -> None:
        """Stop the stream threads (they also end with the process)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class OnnxVisual:
    """The image tower in ONNX Runtime: `kind` "int8" (dynamic quantization: weights int8,
    activations quantized per call, one image per call) or "fp32". Exported once to `graph_path(...)`
    in `caches.onnx`. Runs on one thread per call (the encoder's streams run calls side by side)."""

    def __init__(self, clip, kind: str = "int8", caches: CachePaths | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise TreeclipError(f"--precision {kind} through ONNX needs ONNX Runtime: pip install onnxruntime onnx") from None
        self.path = graph_path(clip, kind, caches_or_default(caches).onnx, f"ort{ort.__version__}")
        if not self.path.is_file():
            export_onnx(clip, self.path, quantize=kind == "int8")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"pixels": x})[0])


def graph_path(clip, kind: str, root: Path, library: str) -> Path:
    """Where an exported graph of `clip`'s image tower lives in the folder `root`: keyed by
    the model's fingerprint, the graph kind, `ONNX_FORMAT`, the runtime's and torch's versions."""
    torch_version = torch.__version__.split("+")[0]
    return root / f"{clip.fingerprint()[:32]}-visual-{kind}-v{ONNX_FORMAT}-{library}-torch{torch_version}.onnx"


def export_onnx(clip, path: Path, *, quantize: bool) -> None:
    """Export the fp32 image tower (as `FastVisual` where it applies) to ONNX, quantized
    dynamically to int8 when asked; written atomically."""
    import tempfile

    from treeclip.fsutil import atomic_path

    visual = copy.deepcopy(clip.model.visual).float().eval()
    fast = fast_visual(visual, fold=True)
    if fast is None:  # with grad on, nn.MultiheadAttention skips its fused fast path, which ONNX lacks
        visual.requires_grad_(True)
    example = torch.zeros(1, 3, clip.image_size, clip.image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        fp32 = Path(tmp) / "visual.onnx"
        with torch.inference_mode(False), torch.set_grad_enabled(fast is None), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic
            torch.onnx.export(fast or visual, (example,), str(fp32), input_names=["pixels"],
                              output_names=["features"], dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}},
                              opset_version=17, dynamo=False)
        with atomic_path(path, suffix=".onnx") as out:
            if not quantize:
                os.replace(fp32, out)
                return
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with _quantizer_advice_dropped(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)


@contextlib.contextmanager
def _quantizer_advice_dropped():
    """Drop the advice ONNX Runtime's quantizer logs on the root logger (it suggests
    pre-processing that does not apply here); every other record passes."""
    root = logging.getLogger()

    def not_quantizer(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in Path(record.pathname).parts

    root.addFilter(not_quantizer)
    try:
        yield
    finally:
        root.removeFilter(not_quantizer)


def top1_agreement(reference: torch.Tensor, other: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose best label is the same under two image embeddings
    (e.g. fp32 vs the fast path) against the same label embeddings."""
    a = (reference @ labels.T).argmax(-1)
    b = (other @ labels.T).argmax(-1)
    return float((a == b).float().mean())
