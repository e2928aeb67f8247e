"""The inference path for images: precision chosen for the hardware, decoding in worker
processes that overlap with the model.

Precisions (`--precision`):
- `auto`: bf16 on a CUDA GPU that supports it or on a CPU with native bf16 matrix units
  (AVX-512-BF16 or AMX, which oneDNN reports), else fp32. On AVX2-only CPUs bf16 is
  emulated and measured 10-20x *slower* than fp32, so auto stays fp32 there.
- `fast` (`treeclip predict`'s and the classifiers' default): like auto where bf16 is
  native; on other CPUs int8: the image tower in ONNX Runtime with dynamic int8
  quantization of its matrix weights, exported once per model and cached (if the export
  fails, fp32 with a note).
- `fp32`, `bf16`, `int8`: as named.
bf16 and int8 are not exact: their top-1 agreement with fp32 is tested here and measured
by benchmarks/predict_benchmark.py; fp32 is exact. `--compile` adds `torch.compile` (a
one-off compile cost of tens of seconds, worth it only for large runs). The text tower is
never touched: label embeddings are computed in fp32 and cached.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from treeclip.errors import InputError, TreeclipError

PRECISIONS = ("auto", "fast", "fp32", "bf16", "int8")


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN can run bf16 matmuls natively (AVX-512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older builds without the probe: be conservative
        return False


def resolve_device(device: str | None) -> torch.device:
    """`auto`/None: CUDA when available, else CPU; otherwise as given (checked)."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TreeclipError(f"--device {device}: CUDA is not available on this machine")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """The concrete precision (`fp32`, `bf16` or `int8`) that `auto`/`fast` mean on `device`."""
    if precision not in PRECISIONS:
        raise TreeclipError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise TreeclipError("--precision int8 runs on the CPU only; use bf16 or fp32 on a GPU")
    if precision not in ("auto", "fast"):
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if cpu_has_fast_bf16():
        return "bf16"
    import importlib.util

    return "int8" if precision == "fast" and importlib.util.find_spec("onnxruntime") else "fp32"


class ImageEncoder:
    """Image embeddings of a `ClipModel` at a chosen precision and device.

    bf16 keeps a bf16 copy of the image tower only (LayerNorms and the final projection
    output are read back as fp32); the caller's model is not changed."""

    def __init__(self, clip, *, device: str | None = "cpu", precision: str = "auto",
                 compile: bool = False, cache_dir: str | os.PathLike | None = None) -> None:
        self.clip = clip
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = torch.float32
        if self.precision == "int8":
            try:
                self.visual = OnnxInt8Visual(clip, cache_dir)
                return
            except Exception as e:
                if precision == "int8":
                    raise
                import sys

                # "fast" chose int8 but this model does not export: fall back to exact fp32
                print(f"treeclip: int8 path unavailable for {clip.name} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:100]}); using fp32", file=sys.stderr)
                self.precision = "fp32"
        visual = clip.model.visual
        if self.precision == "bf16" or self.device != clip.device:
            visual = copy.deepcopy(visual)
        visual = visual.to(self.device).eval()
        if self.precision == "bf16":
            visual = visual.to(torch.bfloat16)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.visual: Callable = torch.compile(visual) if compile else visual

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """(N, 3, H, W) preprocessed pixels -> (N, dim) float32 embeddings on the CPU."""
        x = pixels.to(self.device, dtype=self.dtype, non_blocking=True)
        feats = self.visual(x).float()
        return (F.normalize(feats, dim=-1) if normalize else feats).cpu()


class OnnxInt8Visual:
    """The image tower in ONNX Runtime with dynamic int8 quantization (weights int8,
    activations quantized per image). Exported to `CACHE/onnx/<fingerprint>-visual-int8.onnx`."""

    def __init__(self, clip, cache_dir: str | os.PathLike | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise TreeclipError("--precision int8 needs ONNX Runtime: pip install onnxruntime onnx") from None
        from treeclip.predict.labels import default_cache_dir

        root = (Path(cache_dir) if cache_dir else default_cache_dir()) / "onnx"
        path = root / f"{clip.fingerprint()[:32]}-visual-int8.onnx"
        if not path.is_file():
            export_int8(clip, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # no busy-waiting between runs: the cores are shared with the decoding workers
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        # One image per run: dynamic quantization scales activations over the whole input,
        # so batching images together would make an answer depend on its batch mates (and
        # change on resume). Measured ~15% slower than whole batches, and deterministic.
        x = pixels.float().contiguous().numpy()
        out = [self.session.run(None, {"pixels": x[i:i + 1]})[0] for i in range(len(x))]
        return torch.from_numpy(np.concatenate(out))


def export_int8(clip, path: Path) -> None:
    """Export the fp32 image tower to ONNX and quantize it dynamically to int8 (atomic)."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from treeclip.fsutil import atomic_path

    visual = copy.deepcopy(clip.model.visual).float().eval()
    example = torch.zeros(1, 3, clip.image_size, clip.image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        fp32 = Path(tmp) / "visual.onnx"
        # with grad on, nn.MultiheadAttention skips its fused fast path, which ONNX lacks
        visual.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic
            torch.onnx.export(visual, (example,), str(fp32), input_names=["pixels"], output_names=["features"],
                              dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}}, opset_version=17,
                              dynamo=False)
        import logging

        logging.disable(logging.WARNING)  # the quantizer logs advice on the root logger
        try:
            with atomic_path(path, suffix=".onnx") as out, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)


def top1_agreement(reference: torch.Tensor, other: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose best label is the same under two image embeddings
    (e.g. fp32 vs the fast path) against the same label embeddings."""
    a = (reference @ labels.T).argmax(-1)
    b = (other @ labels.T).argmax(-1)
    return float((a == b).float().mean())


# -- decoding in workers ----------------------------------------------------------------
@dataclass
class Item:
    """One input image: `name` (what output rows call it) and `source` (a path, encoded
    bytes, or a PIL image)."""

    name: str
    source: Any


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Item], preprocess: Callable, draft_size: int | None) -> None:
        self.items, self.preprocess, self.draft = list(items), preprocess, draft_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return i, *decode_item(self.items[i], self.preprocess, self.draft)


def decode_item(item: Item, preprocess: Callable, draft_size: int | None = None) -> tuple[Any, str]:
    """(pixels, "") or (None, "<name>: <reason>") for one input."""
    from PIL import Image

    from treeclip.data.images import decode_image

    try:
        if isinstance(item.source, Image.Image):
            img = item.source if item.source.mode == "RGB" else item.source.convert("RGB")
        else:
            img = decode_image(item.source, name=item.name, draft_size=draft_size)
        return preprocess(img), ""
    except InputError as e:
        return None, str(e)
    except Exception as e:  # a transform failing on an odd image must not stop the run
        return None, f"{item.name}: cannot preprocess ({type(e).__name__}: {str(e)[:100]})"


def _collate(batch):
    idx = [b[0] for b in batch]
    good = [b for b in batch if b[1] is not None]
    pixels = torch.stack([b[1] for b in good]) if good else None
    errors = {b[0]: b[2] for b in batch if b[1] is None}
    return idx, [b[0] for b in good], pixels, errors


def default_workers() -> int:
    """Decoding processes: the cores beyond the two the model's threads keep busy (at most
    8). None on a 2-core machine, where one decode worker competing with the model measured
    slower than decoding inline (fp32: 0.61x vs 0.79x the open_clip baseline)."""
    return max(0, min(8, (os.cpu_count() or 2) - 2))


def iter_batches(items: Sequence[Item], preprocess: Callable, *, batch_size: int = 32,
                 workers: int | None = None, draft_size: int | None = None
                 ) -> Iterator[tuple[list[int], list[int], torch.Tensor | None, dict[int, str]]]:
    """Batches of decoded inputs in input order: (all indices, decoded indices, pixels,
    {index: error line}). With `workers` > 0 decoding runs in DataLoader worker processes
    while the model works on the previous batch; PIL images in the input are decoded in
    this process (they may not pickle cheaply)."""
    from PIL import Image

    workers = default_workers() if workers is None else workers
    if workers and any(isinstance(it.source, Image.Image) for it in items):
        workers = 0
    dataset = _Decoded(items, preprocess, draft_size)
    if not workers:
        for s in range(0, len(items), batch_size):
            yield _collate([dataset[i] for i in range(s, min(s + batch_size, len(items)))])
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=_collate, prefetch_factor=2, persistent_workers=False)
    yield from loader
