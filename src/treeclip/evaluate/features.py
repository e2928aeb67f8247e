"""Image features of a task, encoded in batches and cached on disk.

The cache key is (model fingerprint, task images fingerprint), so every evaluation of one
model on one image set (zero-shot with any text type or templates, few-shot, linear
probe, intrinsic) encodes each image once. A cache entry is a folder:

    CACHE/<model fp[:16]>-<images fp[:16]>/features.npy   (n, dim) float32, L2-normalised
                                          /images.parquet  index, path, ok, error
                                          /meta.json       full fingerprints, model name, n, dim

Encoding is written in parts of `chunk` images (`part-000123.npy` + `.json`) and is
resumed from them after a kill; the final files replace the parts atomically. An image
that cannot be decoded is one line in `errors`, a zero row in the features and
`ok = False`; evaluations leave such rows out.

Class text embeddings are cached the same way (`text-<hash>.npy`), keyed by the model,
the class names and the templates.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from treeclip.evaluate.tasks import Task, iter_shard_images
from treeclip.fsutil import atomic_path, write_json_atomic, write_npy_atomic

FORMAT_VERSION = 1


@dataclass
class Features:
    """Features of one task's images under one model."""

    features: np.ndarray
    ok: np.ndarray
    errors: list[str] = field(default_factory=list)
    cached: bool = False

    @property
    def n_failed(self) -> int:
        return int((~self.ok).sum())


def cache_entry(cache_dir: str | Path, model_fp: str, images_fp: str) -> Path:
    return Path(cache_dir) / f"{model_fp[:16]}-{images_fp[:16]}"


def _load_entry(entry: Path, model_fp: str, images_fp: str, n: int) -> Features | None:
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        if (meta.get("version"), meta.get("model"), meta.get("images"), meta.get("n")) != (FORMAT_VERSION, model_fp, images_fp, n):
            return None
        feats = np.load(entry / "features.npy", allow_pickle=False)
        import pyarrow.parquet as pq

        table = pq.read_table(entry / "images.parquet").to_pydict()
    except (OSError, ValueError, KeyError):
        return None
    errors = [e for e in table["error"] if e]
    return Features(feats, np.asarray(table["ok"], dtype=bool), errors, cached=True)


class _ImageFiles:
    """A map-style dataset: image i -> (index, pixels or None, problem). Decoding runs in
    DataLoader workers when asked for."""

    def __init__(self, task: Task, preprocess, image_size: int, indices: Sequence[int]):
        self.task, self.preprocess, self.size, self.indices = task, preprocess, image_size, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        from treeclip.data.images import decode_image
        from treeclip.errors import InputError

        i = self.indices[j]
        try:
            img = decode_image(self.task.image_path(i), name=str(self.task.image_path(i)), draft_size=self.size)
            return i, self.preprocess(img), ""
        except InputError as e:
            return i, None, str(e)


def _collate(batch):
    import torch

    idx = [b[0] for b in batch]
    good = [b for b in batch if b[1] is not None]
    pixels = torch.stack([b[1] for b in good]) if good else None
    return idx, [b[0] for b in good], pixels, [(b[0], b[2]) for b in batch if b[1] is None]


def image_features(model, task: Task, *, cache_dir: str | Path | None = None, batch_size: int = 64,
                   workers: int = 0, chunk: int = 8192, progress: bool = True) -> Features:
    """Features of every image of `task` under `model` (a `treeclip.model.ClipModel`),
    from the cache when there; see the module docstring."""
    model_fp, images_fp, n = model.fingerprint(), task.images_fingerprint(), len(task)
    entry = cache_entry(cache_dir, model_fp, images_fp) if cache_dir is not None else None
    if entry is not None:
        hit = _load_entry(entry, model_fp, images_fp, n)
        if hit is not None:
            return hit
    dim = model.embed_dim
    feats = np.zeros((n, dim), np.float32)
    ok = np.zeros(n, bool)
    errors = [""] * n
    from tqdm import tqdm

    bar = tqdm(total=n, desc=f"encode {task.name} with {model.name}", unit="img", file=sys.stderr,
               disable=not progress, leave=False)
    if task.shards is not None:
        _encode_shards(model, task, feats, ok, errors, batch_size, bar)
    else:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            part = entry / f"part-{start // chunk:06d}" if entry is not None else None
            if part is not None and _load_part(part, start, stop, feats, ok, errors):
                bar.update(stop - start)
                continue
            _encode_files(model, task, range(start, stop), feats, ok, errors, batch_size, workers, bar)
            if part is not None:
                _save_part(part, start, stop, feats, ok, errors)
    bar.close()
    if entry is not None:
        _save_entry(entry, model, task, feats, ok, errors)
    return Features(feats, ok, [e for e in errors if e])


def _encode_batch(model, idx: list[int], pixels, feats: np.ndarray, ok: np.ndarray) -> None:
    if pixels is None:
        return
    out = model.encode_images(pixels).cpu().numpy()
    feats[idx] = out
    ok[idx] = True


def _encode_files(model, task: Task, indices: range, feats, ok, errors, batch_size: int, workers: int, bar) -> None:
    from torch.utils.data import DataLoader

    data = _ImageFiles(task, model.preprocess, model.image_size, indices)
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    for all_idx, good_idx, pixels, problems in loader:
        _encode_batch(model, good_idx, pixels, feats, ok)
        for i, problem in problems:
            errors[i] = problem
        bar.update(len(all_idx))


def _encode_shards(model, task: Task, feats, ok, errors, batch_size: int, bar) -> None:
    import torch

    from treeclip.data.images import decode_image
    from treeclip.errors import InputError

    idx: list[int] = []
    pixels: list = []
    for i, data, problem in iter_shard_images(task):
        if data is not None:
            try:
                pixels.append(model.preprocess(decode_image(data, name=f"{task.name}:{task.paths[i]}",
                                                            draft_size=model.image_size)))
                idx.append(i)
            except InputError as e:
                problem = str(e)
        if problem:
            errors[i] = problem
        bar.update(1)
        if len(idx) == batch_size:
            _encode_batch(model, idx, torch.stack(pixels), feats, ok)
            idx, pixels = [], []
    if idx:
        _encode_batch(model, idx, torch.stack(pixels), feats, ok)
    for i in np.flatnonzero(~ok):
        if not errors[i]:
            errors[i] = f"{task.name}: sample {task.paths[i]} not found in its shard"


def _save_part(part: Path, start: int, stop: int, feats, ok, errors) -> None:
    write_npy_atomic(part.with_suffix(".npy"), feats[start:stop])
    write_json_atomic(part.with_suffix(".json"), {"start": start, "stop": stop,
                                                  "ok": ok[start:stop].tolist(), "errors": errors[start:stop]})


def _load_part(part: Path, start: int, stop: int, feats, ok, errors) -> bool:
    try:
        info = json.loads(part.with_suffix(".json").read_text(encoding="utf-8"))
        block = np.load(part.with_suffix(".npy"), allow_pickle=False)
    except (OSError, ValueError):
        return False
    if (info.get("start"), info.get("stop")) != (start, stop) or block.shape != feats[start:stop].shape:
        return False
    feats[start:stop] = block
    ok[start:stop] = info["ok"]
    errors[start:stop] = info["errors"]
    return True


def _save_entry(entry: Path, model, task: Task, feats, ok, errors) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    entry.mkdir(parents=True, exist_ok=True)
    write_npy_atomic(entry / "features.npy", feats)
    table = pa.table({"index": np.arange(len(task)), "path": task.paths, "ok": ok, "error": errors})
    with atomic_path(entry / "images.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    # meta.json last: its presence with matching fingerprints marks a complete entry.
    write_json_atomic(entry / "meta.json", {"version": FORMAT_VERSION, "model": model.fingerprint(),
                                            "model_name": model.name, "images": task.images_fingerprint(),
                                            "task": task.name, "n": len(task), "dim": int(feats.shape[1])})
    for p in entry.glob("part-*"):
        p.unlink(missing_ok=True)


def text_embeddings(model, names: Sequence[str], templates: Sequence[str], *,
                    cache_dir: str | Path | None = None, progress: bool = False) -> np.ndarray:
    """Zero-shot class embeddings (see `zeroshot.class_embeddings`), cached by model
    fingerprint, names and templates in the label-embedding cache that `predict` uses."""
    from treeclip.predict.labels import label_embeddings

    return label_embeddings(model, list(names), list(templates), progress=progress,
                            cache_dir=Path(cache_dir) / "text" if cache_dir is not None else None)
