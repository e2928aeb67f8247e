"""Image embeddings of a model at the precision the policy chose (`runtime.precision`):
fp32 (exact), a bf16 copy of the image tower, or the tower exported to ONNX Runtime with
dynamic int8 quantization (cached in `CachePaths.onnx`, keyed by model fingerprint,
library versions and `ONNX_FORMAT`). Which library runs fp32 and bf16 on a CPU (torch,
ONNX Runtime, OpenVINO, torch.compile) is measured per model and machine (`runtime.backends`).

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
import functools
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
        self.streams = max(1, streams or torch.get_num_threads())
        self.backend = "torch"
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        caches = caches_or_default(caches)
        if self.precision == "int8" and self._use_int8(caches, checked=precision != "int8"):
            return
        self.visual, self.backend = self._tower(caches, backend, compile)

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

    def _tower(self, caches: CachePaths, backend: str, compile: bool) -> tuple[Callable, str]:
        """(tower, backend name) for fp32 or bf16: on a CPU the one asked for, or (`auto`)
        the fastest measured at the bar of the precision (`runtime.backends`); torch elsewhere."""
        from treeclip.runtime import backends

        if self.device.type != "cpu" or backend == "torch":
            if backend not in ("auto", "torch"):
                raise TreeclipError(f"--backend {backend} runs on the CPU only; this run is on {self.device}")
            return self._torch_tower(compile), "torch.compile" if compile else "torch"
        candidates = self._candidates(caches, compile)
        if backend != "auto":
            if backend not in candidates:
                raise TreeclipError(f"--backend {backend} does not run {self.precision} here "
                                    f"(available: torch{''.join(', ' + c for c in candidates)})")
            return candidates[backend](), backend
        if not candidates:
            return self._torch_tower(False), "torch"
        built: dict[str, Callable] = {}

        def measure() -> dict:
            own = None if self.precision == "fp32" else self._torch_tower(False)
            record, made = backends.choose(self.precision, self._fp32_tower(), candidates,
                                           backends.calibration_pixels(self.clip), own=own)
            built.update(made)
            return record

        chosen = self._measured(caches, self.precision, measure, compile=compile)["backend"]
        if chosen == "torch" or chosen not in candidates:
            return self._torch_tower(False), "torch"
        return built.get(chosen) or candidates[chosen](), chosen

    def _candidates(self, caches: CachePaths, compile: bool) -> dict[str, Callable[[], Callable]]:
        """The towers that may run this precision here besides torch's, made on demand."""
        from treeclip.runtime.precision import onnxruntime_available, openvino_available

        found: dict[str, Callable[[], Callable]] = {}
        if self.precision == "fp32" and onnxruntime_available():
            found["onnxruntime"] = lambda: OnnxVisual(self.clip, "fp32", caches)
        if openvino_available():
            found["openvino"] = lambda: OpenVinoVisual(self.clip, self.precision, caches, self.streams)
        if compile:
            found["torch.compile"] = lambda: self._torch_tower(True)
        return found

    def _torch_tower(self, compile: bool) -> Callable:
        """open_clip's module on this device at this precision (a copy unless fp32 on the
        model's own device), compiled when asked; it takes fp32 pixels like every tower."""
        visual = self.clip.model.visual
        if self.precision == "bf16" or self.device != self.clip.device:
            visual = copy.deepcopy(visual)
        visual = visual.to(self.device).eval()
        if self.precision != "bf16":
            return torch.compile(visual) if compile else visual
        visual = visual.to(torch.bfloat16)
        run = torch.compile(visual) if compile else visual
        return lambda pixels: run(pixels.to(torch.bfloat16))

    def _fp32_tower(self) -> Callable:
        """open_clip's fp32 image tower on the CPU (the model's own weights, or a copy)."""
        visual = self.clip.model.visual
        return visual.eval() if self.clip.device.type == "cpu" else copy.deepcopy(visual).cpu().eval()

    def _measured(self, caches: CachePaths, precision: str, measure: Callable[[], dict], *,
                  compile: bool = False) -> dict:
        """A backend measurement of this model, from the record when made before."""
        from treeclip.runtime.backends import BackendRecords, record_key

        records, key = BackendRecords(caches.onnx), record_key(self.clip, precision, compile=compile)
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
            x = pixels.to(self.device, dtype=torch.float32, non_blocking=True)
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
        self.path = exported_graph(clip, kind, caches_or_default(caches))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"pixels": x})[0])


class OpenVinoVisual:
    """The image tower in OpenVINO, compiled from the exported fp32 graph with the
    inference precision `precision` ("fp32" or "bf16": OpenVINO's own bf16 kernels). One
    OpenVINO stream of one thread per encoder stream, and as many requests, lent to one call
    at a time: an image's bits do not depend on the stream that ran it.

    Compiled models live as long as the process (`_openvino_compiled`): OpenVINO 2026.4's CPU
    plugin, destroying a compiled model, unmaps a signal stack that stays the calling
    thread's alternate stack (seen with Python's faulthandler on), so the next signal
    handled there (a child's SIGCHLD) kills the process."""

    def __init__(self, clip, precision: str = "fp32", caches: CachePaths | None = None, streams: int = 1) -> None:
        if precision not in ("fp32", "bf16"):
            raise TreeclipError(f"OpenVINO runs the image tower at fp32 or bf16, not {precision}")
        self.path = exported_graph(clip, "fp32", caches_or_default(caches))
        self.compiled, self._requests = _openvino_compiled(str(self.path), "f32" if precision == "fp32" else "bf16",
                                                           streams)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        request = self._requests.get()
        try:
            out = request.infer({0: pixels.float().contiguous().numpy()})[0]
            return torch.from_numpy(out.copy())  # the request reuses its output buffer
        finally:
            self._requests.put(request)


@functools.lru_cache(maxsize=None)
def _openvino_compiled(path: str, hint: str, streams: int):
    """(compiled model, a queue of its `streams` requests) of the graph at `path` on the
    CPU, made once per process (see `OpenVinoVisual`)."""
    import queue

    compiled = _openvino_core().compile_model(path, "CPU", {
        "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "THROUGHPUT",
        "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams})
    requests: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(streams):
        requests.put(compiled.create_infer_request())
    return compiled, requests


@functools.lru_cache(maxsize=1)
def _openvino_core():
    """One OpenVINO `Core` per process: each new one loads the CPU plugin again."""
    try:
        import openvino as ov
    except ImportError:
        raise TreeclipError("--backend openvino needs OpenVINO: pip install openvino") from None
    return ov.Core()


def exported_graph(clip, kind: str, caches: CachePaths) -> Path:
    """The graph of `clip`'s image tower of `kind` ("fp32" or "int8") in `caches.onnx`,
    exported the first time it is asked for."""
    path = graph_path(clip, kind, caches.onnx)
    if not path.is_file():
        export_onnx(clip, path, quantize=kind == "int8")
    return path


def graph_path(clip, kind: str, root: Path) -> Path:
    """Where an exported graph of `clip`'s image tower lives in the folder `root`: keyed by
    the model's fingerprint, the graph kind, `ONNX_FORMAT`, torch's version and, for int8,
    the version of ONNX Runtime's quantizer."""
    from importlib import metadata

    torch_version = torch.__version__.split("+")[0]
    library = f"-ort{metadata.version('onnxruntime')}" if kind == "int8" else ""
    return root / f"{clip.fingerprint()[:32]}-visual-{kind}-v{ONNX_FORMAT}{library}-torch{torch_version}.onnx"


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
