"""Which library runs the image tower at a precision on this machine: measured once per
model, not assumed.

- **fp32** has two backends: torch (open_clip's own module) and ONNX Runtime (the same
  tower exported). Which GEMMs are faster depends on the CPU (ONNX Runtime's fp32 ran at
  twice torch's rate on the AVX-512 EPYCs measured, docs/benchmarks.md), so the exact path
  takes the faster of those whose embeddings stay within `EXACT_MAX_ABS` (max-abs, on
  L2-normalised embeddings) and `EXACT_MIN_COSINE` of torch's on calibration images.
- **int8** runs in ONNX Runtime only (dynamic quantization). It is kept when its
  embeddings stay within `INT8_MIN_COSINE` of fp32 on the calibration images; a model
  whose int8 graph falls below (quantization gone wrong) runs at the next precision the
  policy allows instead (`runtime.encoder`).

Calibration images are synthetic photos (`data.synth`), preprocessed as the model's own
preprocess does; each backend is timed on one thread, one image per call, as the encoder
runs it. The measurement is kept in `CachePaths.onnx/backends-v1.json`, keyed by the
model fingerprint, the precision, torch's and ONNX Runtime's versions and the CPU flags,
so it runs once per model and machine (a few seconds for ViT-B-16).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from treeclip.fsutil import write_json_atomic
from treeclip.log import get_logger

log = get_logger(__name__)

EXACT_MAX_ABS = 1e-5
EXACT_MIN_COSINE = 0.99999
INT8_MIN_COSINE = 0.98
RECORD = "backends-v1.json"
CALIBRATION_IMAGES = 4

Tower = Callable[[torch.Tensor], torch.Tensor]


def calibration_pixels(clip, n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """(n, 3, S, S) synthetic photos of one species through the model's preprocess."""
    from PIL import Image

    from treeclip.data.synth import load_species, look_of, render_batch

    species = load_species()[0]
    photos = render_batch(look_of(species.taxon, species.meaning), n, max(64, clip.image_size),
                          np.random.default_rng(0))
    return torch.stack([clip.preprocess(Image.fromarray(p)) for p in photos])


def agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(max-abs difference, min cosine) of two sets of embeddings, each L2-normalised."""
    a, b = F.normalize(reference.float(), dim=-1), F.normalize(other.float(), dim=-1)
    return float((a - b).abs().max()), float((a * b).sum(-1).min())


def timed(tower: Tower, pixels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(embeddings, CPU seconds per image) of `tower` on one thread, one image per call,
    after one warm-up call; run on a thread of its own (the caller's thread count stays)."""
    def run() -> tuple[torch.Tensor, float]:
        with torch.inference_mode():
            tower(pixels[:1])
            start = time.thread_time()
            out = torch.cat([tower(pixels[i:i + 1]).float() for i in range(len(pixels))])
            return out, (time.thread_time() - start) / len(pixels)

    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return pool.submit(run).result()


def record_key(clip, precision: str) -> str:
    """What a measurement depends on: the model, the precision, the libraries, the CPU."""
    import onnxruntime as ort

    from treeclip.runtime.precision import cpu_features

    return (f"{clip.fingerprint()[:32]}-{precision}-torch{torch.__version__.split('+')[0]}"
            f"-ort{ort.__version__}-{cpu_features().describe()}")


class BackendRecords:
    """The measurements kept in one folder (`CachePaths.onnx`)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / RECORD

    def _all(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict | None:
        found = self._all().get(key)
        return found if isinstance(found, dict) else None

    def put(self, key: str, record: dict) -> None:
        write_json_atomic(self.path, {**self._all(), key: record})


def choose_fp32(reference: Tower, candidates: dict[str, Callable[[], Tower]], pixels: torch.Tensor) -> dict:
    """Time torch's tower (`reference`) and each candidate (made on demand; one that fails
    to build is left out), and pick the fastest whose embeddings are exact enough."""
    ref, ref_s = timed(reference, pixels)
    record = {"backend": "torch", "s_per_image": {"torch": ref_s}, "agreement": {}}
    best = ref_s
    for name, make in candidates.items():
        try:
            out, seconds = timed(make(), pixels)
        except Exception as err:  # a backend that cannot take this model is not a choice
            record["agreement"][name] = f"unavailable ({type(err).__name__})"
            continue
        max_abs, cosine = agreement(ref, out)
        record["s_per_image"][name] = seconds
        record["agreement"][name] = {"max_abs": max_abs, "min_cosine": cosine}
        if max_abs <= EXACT_MAX_ABS and cosine >= EXACT_MIN_COSINE and seconds < best:
            record["backend"], best = name, seconds
    return record


def int8_holds(reference: Tower, int8: Tower, pixels: torch.Tensor) -> dict:
    """Whether the int8 tower's embeddings stay within `INT8_MIN_COSINE` of fp32's."""
    ref, _ = timed(reference, pixels)
    out, _ = timed(int8, pixels)
    max_abs, cosine = agreement(ref, out)
    return {"holds": cosine >= INT8_MIN_COSINE, "max_abs": max_abs, "min_cosine": cosine}
