"""Which library runs the image tower at a precision on this machine: measured once per
model, not assumed.

Candidates, each timed against torch (open_clip's own module) at the same precision:

| precision | candidates | kept when, against torch fp32's embeddings |
|---|---|---|
| fp32 (the exact path) | ONNX Runtime, OpenVINO (f32), torch.compile with `--compile` | max-abs <= `EXACT_MAX_ABS` and cosine >= `EXACT_MIN_COSINE` |
| bf16 | OpenVINO (bf16 inference hint), torch.compile with `--compile` | cosine >= `BF16_MIN_COSINE` |
| int8 | ONNX Runtime only (dynamic quantization) | cosine >= `INT8_MIN_COSINE`, else the next precision the policy allows (`runtime.encoder`) |

The fastest candidate that holds its precision's bar runs; torch runs when none is faster.
Which GEMMs are fastest depends on the CPU (ONNX Runtime's fp32 ran at twice torch's rate
on the AVX-512 EPYC of issue 21, 1.04-1.4x on another of that class, where OpenVINO's
bf16 ran 1.3x torch's), so nothing here is a table of machines. torch.compile competes
only when asked (`--compile`): compiling ViT-B-16 takes minutes on 2 cores, paid again by
every new process.

Calibration images are synthetic photos (`data.synth`), preprocessed as the model's own
preprocess does; each backend is timed on one thread, one image per call, as the encoder
runs it (median wall time per image). The measurement is kept in
`CachePaths.onnx/backends-v2.json`, keyed by the model fingerprint, the precision, the
libraries' versions, the CPU flags and whether torch.compile competed, so it runs once per
model and machine (seconds for ViT-B-16).
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
BF16_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.98
RECORD = "backends-v2.json"
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
    """(embeddings, seconds per image) of `tower` on one thread, one image per call, after
    one warm-up call; run on a thread of its own (the caller's thread count stays). Wall
    time, median over the images: a library may compute on threads of its own."""
    def run() -> tuple[torch.Tensor, float]:
        with torch.inference_mode():
            tower(pixels[:1])
            outs, seconds = [], []
            for i in range(len(pixels)):
                start = time.perf_counter()
                outs.append(tower(pixels[i:i + 1]).float())
                seconds.append(time.perf_counter() - start)
            return torch.cat(outs), float(np.median(seconds))

    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return pool.submit(run).result()


def library_versions() -> str:
    """The versions of the libraries that can run a tower, as part of a record's key."""
    from importlib import metadata

    parts = [f"torch{torch.__version__.split('+')[0]}"]
    for short, dist in (("ort", "onnxruntime"), ("ov", "openvino")):
        try:
            parts.append(f"{short}{metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return "-".join(parts)


def record_key(clip, precision: str, *, compile: bool = False) -> str:
    """What a measurement depends on: the model, the precision, the libraries, the CPU,
    and whether torch.compile was a candidate."""
    from treeclip.runtime.precision import cpu_features

    return (f"{clip.fingerprint()[:32]}-{precision}-{library_versions()}-{cpu_features().describe()}"
            + ("-compile" if compile else ""))


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


def holds(precision: str, max_abs: float, cosine: float) -> bool:
    """Whether embeddings this far from torch fp32's hold the bar of `precision`."""
    if precision == "fp32":
        return max_abs <= EXACT_MAX_ABS and cosine >= EXACT_MIN_COSINE
    return cosine >= (BF16_MIN_COSINE if precision == "bf16" else INT8_MIN_COSINE)


def choose(precision: str, fp32: Tower, candidates: dict[str, Callable[[], Tower]], pixels: torch.Tensor,
           *, own: Tower | None = None) -> tuple[dict, dict[str, Tower]]:
    """Time torch's tower at `precision` (`own`; `fp32` itself for fp32) and each candidate
    (made on demand; one that fails to build or run is left out), and pick the fastest
    whose embeddings hold `precision`'s bar against `fp32`'s. Returns the record and the
    candidates built (so the chosen one need not be built twice)."""
    reference, fp32_s = timed(fp32, pixels)
    own_s = fp32_s if own is None else timed(own, pixels)[1]
    record = {"backend": "torch", "s_per_image": {"torch": own_s}, "agreement": {}}
    built, best = {}, own_s
    for name, make in candidates.items():
        try:
            built[name] = make()
            out, seconds = timed(built[name], pixels)
        except Exception as err:  # a backend that cannot take this model is not a choice
            record["agreement"][name] = f"unavailable ({type(err).__name__})"
            built.pop(name, None)
            continue
        max_abs, cosine = agreement(reference, out)
        record["s_per_image"][name] = seconds
        record["agreement"][name] = {"max_abs": max_abs, "min_cosine": cosine}
        if holds(precision, max_abs, cosine) and seconds < best:
            record["backend"], best = name, seconds
    return record, built


def int8_holds(reference: Tower, int8: Tower, pixels: torch.Tensor) -> dict:
    """Whether the int8 tower's embeddings stay within `INT8_MIN_COSINE` of fp32's."""
    ref, _ = timed(reference, pixels)
    out, _ = timed(int8, pixels)
    max_abs, cosine = agreement(ref, out)
    return {"holds": holds("int8", max_abs, cosine), "max_abs": max_abs, "min_cosine": cosine}
