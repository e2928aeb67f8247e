"""Image embeddings to Parquet or `.npy` (`treeclip embed`).

Parquet: one row per input, columns `file_name`, `embedding` (list of float32, null for a
failed input) and `error`. `.npy`: an (n_ok, dim) float32 array, with its row names in
`<name>.files.csv` beside it (`row`, `file_name`, `error`; failed inputs have no row).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from treeclip.errors import TreeclipError
from treeclip.fsutil import atomic_path, write_npy_atomic, write_text_atomic
from treeclip.runtime.precision import VERB_DEFAULTS


@dataclass
class Embeddings:
    """`vectors[i]` embeds `names[i]`; `errors` maps each failed input to its reason;
    `precision` is the one that ran (`fp32` unless a faster one was asked for)."""

    names: list[str]
    vectors: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"


def embed_images(model: Any, images: Any, *, normalize: bool = True, batch_size: int = 32,
                 workers: int | None = None, device: str | None = "cpu", precision: str = VERB_DEFAULTS["embed"],
                 progress: bool = False, cache_dir: str | None = None) -> Embeddings:
    """Embed `images` (paths, folders, globs, bytes, PIL images or `Item`s) with `model`
    (a spec or a ClipModel); `normalize=False` keeps the raw projection output. Exact fp32
    by default (embeddings are data others build on); `precision="fast"` for speed."""
    from treeclip.predict.classifiers import _load_clip
    from treeclip.runtime.encoder import ImageEncoder
    from treeclip.runtime.images import Item, iter_batches
    from treeclip.predict.inputs import as_items

    clip = _load_clip(model)
    encoder = ImageEncoder(clip, device=device, precision=precision, cache_dir=cache_dir)
    items = images if isinstance(images, list) and all(isinstance(i, Item) for i in images) else as_items(images)
    names, chunks, errors = [], [], {}
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="img", desc="embedding", file=sys.stderr)
    for idx, ok, pixels, errs in iter_batches(items, clip.preprocess, batch_size=batch_size,
                                              workers=workers, draft_size=clip.image_size):
        if pixels is not None:
            chunks.append(encoder(pixels, normalize=normalize).numpy())
            names.extend(items[i].name for i in ok)
        errors.update({items[i].name: e for i, e in errs.items()})
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    dim = clip.embed_dim
    vectors = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dim), np.float32)
    return Embeddings(names, vectors, errors, encoder.precision)


def write_embeddings(path: str | os.PathLike, emb: Embeddings) -> list[Path]:
    """Write `emb` to `path` (`.parquet` or `.npy`, atomically); the files written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        dim = emb.vectors.shape[1]
        vec_type = pa.list_(pa.float32(), dim)
        names = emb.names + list(emb.errors)
        flat = pa.array(emb.vectors.reshape(-1), type=pa.float32())
        good = pa.FixedSizeListArray.from_arrays(flat, dim)
        bad = pa.nulls(len(emb.errors), type=vec_type)
        table = pa.table({
            "file_name": pa.array(names, pa.string()),
            "embedding": pa.concat_arrays([good, bad]) if len(emb.errors) else good,
            "error": pa.array([None] * len(emb.names) + list(emb.errors.values()), pa.string()),
        })
        with atomic_path(path, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        return [path]
    if suffix == ".npy":
        write_npy_atomic(path, emb.vectors)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["row", "file_name", "error"])
        w.writerows([i, n, ""] for i, n in enumerate(emb.names))
        w.writerows(["", n, e] for n, e in emb.errors.items())
        names_path = path.with_suffix(".files.csv")
        write_text_atomic(names_path, buf.getvalue())
        return [path, names_path]
    raise TreeclipError(f"{path}: embeddings go to a .parquet or .npy file")
