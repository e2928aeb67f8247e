"""Image embeddings of a model at the precision the policy chose (`runtime.precision`):
fp32 (exact), a bf16 copy of the image tower, or the tower exported to ONNX Runtime with
dynamic int8 quantization (cached under `cache_dir('onnx')` by model fingerprint).

bf16 and int8 are not exact: their top-1 agreement with fp32 is tested on a trained model
and measured by benchmarks/predict_benchmark.py. The text tower is never touched: label
embeddings are computed in fp32 and cached.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from treeclip.cache import cache_dir as cache_folder
from treeclip.errors import TreeclipError
from treeclip.runtime.precision import resolve_device, resolve_precision

ONNX_FORMAT = 1
"""Format version of the exported int8 graphs; part of their cache key."""


class ImageEncoder:
    """Image embeddings of a `ClipModel` at a chosen precision and device.

    bf16 keeps a bf16 copy of the image tower only (the output is read back as fp32);
    fp32 on the model's own device shares the model's weights. The caller's model is
    never changed. `precision` is the concrete one that runs (`fp32`, `bf16`, `int8`)."""

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
    activations quantized per image), exported once to
    `<cache>/onnx/<fingerprint>-visual-int8-v<ONNX_FORMAT>.onnx`."""

    def __init__(self, clip, cache_dir: str | os.PathLike | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise TreeclipError("--precision int8 needs ONNX Runtime: pip install onnxruntime onnx") from None
        root = Path(cache_dir) / "onnx" if cache_dir else cache_folder("onnx")
        path = root / f"{clip.fingerprint()[:32]}-visual-int8-v{ONNX_FORMAT}.onnx"
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
    import logging
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
