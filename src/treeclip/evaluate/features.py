"""Image features of a task, encoded in batches and cached on disk.

Images go through the shared inference pipeline (`treeclip.runtime.images`: safe decode,
the model's preprocessing, batches in order) and the shared encoder at the precision the
policy gives `eval` (exact fp32 by default; `treeclip.runtime.precision`).

The cache key is (model fingerprint, task images fingerprint, precision), so every
evaluation of one model on one image set (zero-shot with any text type or templates,
few-shot, linear probe, intrinsic) encodes each image once. A cache entry is a folder
in `CachePaths.features` (`$TREECLIP_CACHE/features`, or `--cache DIR/features`):

    <model fp[:16]>-<images fp[:16]>[-<precision>]/features.npy   (n, dim) float32, L2-normalised
                                                  /images.parquet  index, path, ok, error
                                                  /meta.json       format, fingerprints, precision, n, dim

Folder tasks are encoded in parts of `chunk` images (`treeclip.runtime.parts`), resumed
from them after a kill; the final files replace the parts. An image that cannot be
decoded is one line in `errors`, a zero row in the features and `ok = False`;
evaluations leave such rows out.

Class text embeddings come from the label-embedding cache that `predict` uses
(`treeclip.runtime.labels`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from treeclip.cache import CachePaths, caches_or_default
from treeclip.evaluate.tasks import Task, iter_shard_images
from treeclip.fsutil import atomic_path, write_json_atomic, write_npy_atomic
from treeclip.log import progress_bar
from treeclip.runtime.encoder import ImageEncoder
from treeclip.runtime.images import Item, iter_batches
from treeclip.runtime.options import InferenceOptions
from treeclip.runtime.parts import PartStore, fill_by_parts

FORMAT_VERSION = 2
"""Format version of a feature cache entry; checked on read."""


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


def cache_entry(root: Path, model_fp: str, images_fp: str, precision: str = "fp32", decode: str = "") -> Path:
    suffix = ("" if precision == "fp32" else f"-{precision}") + (f"-{decode}" if decode else "")
    return root / f"{model_fp[:16]}-{images_fp[:16]}{suffix}"


@dataclass
class _Encoding:
    """What one task's encode fills in: features, which rows are good, and why not."""

    encoder: ImageEncoder
    task: Task
    batch_size: int
    workers: int
    feats: np.ndarray
    ok: np.ndarray
    errors: list[str]
    bar: object
    preprocess: object = None
    exact: bool = False

    def add(self, idx: list[int], pixels) -> None:
        if pixels is not None:
            self.feats[idx] = self.encoder(pixels).numpy()
            self.ok[idx] = True


def image_features(model, task: Task, *, options: InferenceOptions | None = None, caches: CachePaths | None = None,
                   chunk: int = 8192, progress: bool = True, exact: bool = False) -> Features:
    """Features of every image of `task` under `model` (a `treeclip.model.ClipModel`),
    from the cache when there; see the module docstring. `options`: precision (exact fp32
    by default), device (default the model's), batch size and decoding workers; `caches`:
    where entries live (None: the environment's). `exact`: decode as `predict` does at
    fp32 (no JPEG draft, `options.resize`), so a head fitted on these features sees at
    fit time the embeddings it gets at predict time (a cache entry of its own)."""
    options = options or InferenceOptions.for_verb("eval", device=str(model.device), batch_size=64, workers=0)
    caches = caches_or_default(caches)
    # torch's own fp32 tower: evaluation numbers do not depend on a backend measured per machine
    encoder = ImageEncoder(model, device=options.device, precision=options.precision, caches=caches, backend="torch")
    model_fp, images_fp, n = model.fingerprint(), task.images_fingerprint(), len(task)
    decode = f"exact-{options.resize}" if exact else ""
    entry = cache_entry(caches.features, model_fp, images_fp, encoder.precision, decode)
    hit = _load_entry(entry, model_fp, images_fp, n, encoder.precision)
    if hit is not None:
        return hit
    bar = progress_bar(n, desc=f"encode {task.name} with {model.name}", enabled=progress, leave=False)
    run = _Encoding(encoder, task, options.batch_size, options.workers or 0, np.zeros((n, model.embed_dim), np.float32),
                    np.zeros(n, bool), [""] * n, bar,
                    model.preprocess_for(options.resize) if exact else model.preprocess, exact)
    if task.shards is not None:
        _encode_shards(run)
    else:
        parts = PartStore(entry / "parts")
        fill_by_parts(run.feats, chunk, lambda start, stop: _encode_files(run, start, stop), parts,
                      restore=lambda start, stop, extra: _restore(run, start, stop, extra))
    bar.close()
    _save_entry(entry, model, task, run, encoder.precision)
    return Features(run.feats, run.ok, [e for e in run.errors if e])


def _encode_files(run: _Encoding, start: int, stop: int) -> tuple[np.ndarray, dict]:
    """Encode images `start..stop` of a folder task; their rows and the part's facts."""
    items = [Item(str(run.task.image_path(i)), run.task.image_path(i)) for i in range(start, stop)]
    size = run.encoder.clip.image_size
    for all_idx, good_idx, pixels, problems in iter_batches(items, run.preprocess, batch_size=run.batch_size,
                                                           workers=run.workers, draft_size=size, exact=run.exact):
        run.add([start + i for i in good_idx], pixels)
        for i, problem in problems.items():
            run.errors[start + i] = problem
        run.bar.update(len(all_idx))
    return run.feats[start:stop], {"ok": run.ok[start:stop].tolist(), "errors": run.errors[start:stop]}


def _restore(run: _Encoding, start: int, stop: int, extra: dict) -> None:
    run.ok[start:stop] = extra["ok"]
    run.errors[start:stop] = extra["errors"]
    run.bar.update(stop - start)


def _shard_items(task: Task, errors: list[str]) -> Iterator[tuple[int, Item]]:
    """(index, item) of each readable shard member, in shard order; problems to `errors`."""
    for i, data, problem in iter_shard_images(task):
        if data is None:
            errors[i] = problem
        else:
            yield i, Item(f"{task.name}:{task.paths[i]}", data)


def _encode_shards(run: _Encoding) -> None:
    """Encode a dataset task's images as the shards deliver them, a batch at a time."""
    batch: list[tuple[int, Item]] = []
    for pair in _shard_items(run.task, run.errors):
        batch.append(pair)
        if len(batch) == run.batch_size:
            _encode_items(run, batch)
            batch = []
    if batch:
        _encode_items(run, batch)
    for i in np.flatnonzero(~run.ok):
        if not run.errors[i]:
            run.errors[i] = f"{run.task.name}: sample {run.task.paths[i]} not found in its shard"


def _encode_items(run: _Encoding, batch: list[tuple[int, Item]]) -> None:
    index = [i for i, _ in batch]
    size = run.encoder.clip.image_size
    for all_idx, good_idx, pixels, problems in iter_batches([it for _, it in batch], run.encoder.clip.preprocess,
                                                           batch_size=len(batch), workers=0, draft_size=size):
        run.add([index[j] for j in good_idx], pixels)
        for j, problem in problems.items():
            run.errors[index[j]] = problem
        run.bar.update(len(all_idx))


def _load_entry(entry: Path, model_fp: str, images_fp: str, n: int, precision: str) -> Features | None:
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        wanted = (FORMAT_VERSION, model_fp, images_fp, n, precision)
        if (meta.get("version"), meta.get("model"), meta.get("images"), meta.get("n"), meta.get("precision")) != wanted:
            return None
        feats = np.load(entry / "features.npy", allow_pickle=False)
        import pyarrow.parquet as pq

        table = pq.read_table(entry / "images.parquet").to_pydict()
    except (OSError, ValueError, KeyError):
        return None
    errors = [e for e in table["error"] if e]
    return Features(feats, np.asarray(table["ok"], dtype=bool), errors, cached=True)


def _save_entry(entry: Path, model, task: Task, run: _Encoding, precision: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    entry.mkdir(parents=True, exist_ok=True)
    write_npy_atomic(entry / "features.npy", run.feats)
    table = pa.table({"index": np.arange(len(task)), "path": task.paths, "ok": run.ok, "error": run.errors})
    with atomic_path(entry / "images.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    # meta.json last: its presence with matching fingerprints marks a complete entry.
    write_json_atomic(entry / "meta.json", {"version": FORMAT_VERSION, "model": model.fingerprint(),
                                            "model_name": model.name, "images": task.images_fingerprint(),
                                            "precision": precision, "task": task.name, "n": len(task),
                                            "dim": int(run.feats.shape[1])})
    PartStore(entry / "parts").clear()


def text_embeddings(model, names: Sequence[str], templates: Sequence[str], *,
                    caches: CachePaths | None = None, progress: bool = False) -> np.ndarray:
    """Zero-shot class embeddings (`runtime.labels.class_embeddings`), cached by model
    fingerprint, names and templates in the label-embedding cache that `predict` uses
    (`caches.labels`; None: the environment's)."""
    from treeclip.runtime.labels import label_embeddings

    return label_embeddings(model, list(names), list(templates), progress=progress, caches=caches)
