"""Image embeddings to Parquet or `.npy` (`treeclip embed`).

Parquet: one row per input, columns `file_name`, `embedding` (list of float32, null for a
failed input) and `error`. `.npy`: an (n_ok, dim) float32 array, with its row names in
`<name>.files.csv` beside it (`row`, `file_name`, `error`; failed inputs have no row).

Resumable: `treeclip embed` writes its results in chunks (`<output>.parts/`, Parquet) as
it goes, and the output once everything is embedded; a rerun skips what the output and
the chunks hold (`merge_embeddings` joins them in input order, newer chunks winning).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from treeclip.cache import CachePaths
from treeclip.errors import TreeclipError
from treeclip.fsutil import atomic_path, write_npy_atomic, write_text_atomic
from treeclip.log import progress_bar
from treeclip.runtime.options import InferenceOptions


@dataclass
class Embeddings:
    """`vectors[i]` embeds `names[i]`; `errors` maps each failed input to its reason;
    `precision` is the one that ran (`fp32` unless a faster one was asked for), `backend`
    the library that ran the image tower (`runtime.backends`; empty when read from a file)."""

    names: list[str]
    vectors: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"
    backend: str = ""


def embed_batches(model: Any, images: Any, *, normalize: bool = True, options: InferenceOptions | None = None,
                  caches: CachePaths | None = None, progress: bool = False) -> Iterator[Embeddings]:
    """`Embeddings` of `images` batch by batch, in input order (see `embed_images`)."""
    from treeclip.predict.classifiers import _load_clip
    from treeclip.predict.inputs import as_items
    from treeclip.runtime.encoder import ImageEncoder
    from treeclip.runtime.images import DRAFT_MARGIN, Item, iter_batches

    options = options or InferenceOptions.for_verb("embed")
    clip = _load_clip(model, caches)
    encoder = ImageEncoder(clip, device=options.device, precision=options.precision, caches=caches,
                           backend=options.backend)
    items = images if isinstance(images, list) and all(isinstance(i, Item) for i in images) else as_items(images)
    bar = progress_bar(len(items), desc="embedding", enabled=progress)
    for idx, ok, pixels, errs in iter_batches(items, clip.preprocess_for(options.resize), batch_size=options.batch_size,
                                              workers=options.workers, draft_size=clip.image_size, draft_margin=DRAFT_MARGIN,
                                              exact=encoder.precision == "fp32"):
        vectors = (encoder(pixels, normalize=normalize).numpy().astype(np.float32) if pixels is not None
                   else np.zeros((0, clip.embed_dim), np.float32))
        yield Embeddings([items[i].name for i in ok], vectors, {items[i].name: e for i, e in errs.items()},
                         encoder.precision, encoder.backend)
        bar.update(len(idx))
    bar.close()


def embed_images(model: Any, images: Any, *, normalize: bool = True, options: InferenceOptions | None = None,
                 caches: CachePaths | None = None, progress: bool = False) -> Embeddings:
    """Embed `images` (paths, folders, globs, bytes, PIL images or `Item`s) with `model`
    (a spec or a ClipModel); `normalize=False` keeps the raw projection output. Exact fp32
    by default (embeddings are data others build on); `options=InferenceOptions(precision="fast")`
    for speed."""
    return concat_embeddings(list(embed_batches(model, images, normalize=normalize, options=options, caches=caches,
                                                progress=progress)))


def concat_embeddings(parts: Sequence[Embeddings], dim: int = 0) -> Embeddings:
    """One `Embeddings` of several, in order (`dim` for an empty result)."""
    names = [n for p in parts for n in p.names]
    errors = {k: v for p in parts for k, v in p.errors.items()}
    dims = [p.vectors.shape[1] for p in parts] or [dim]
    vectors = np.concatenate([p.vectors for p in parts]) if parts else np.zeros((0, dims[0]), np.float32)
    return Embeddings(names, vectors.astype(np.float32, copy=False), errors,
                      parts[0].precision if parts else "fp32", parts[0].backend if parts else "")


def read_embeddings(path: str | os.PathLike) -> Embeddings:
    """An output `write_embeddings` wrote (Parquet, or `.npy` with its `.files.csv`)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path).to_pydict()
            good = [i for i, e in enumerate(table["error"]) if not e]
            vectors = np.asarray([table["embedding"][i] for i in good], np.float32)
            errors = {table["file_name"][i]: e for i, e in enumerate(table["error"]) if e}
            return Embeddings([table["file_name"][i] for i in good], vectors.reshape(len(good), -1), errors)
        vectors = np.load(path, allow_pickle=False)
        rows = list(csv.DictReader(io.StringIO(path.with_suffix(".files.csv").read_text(encoding="utf-8"))))
    except (OSError, ValueError, KeyError) as err:
        raise TreeclipError(f"{path}: cannot read the existing embeddings ({str(err)[:120]}); "
                            "give another --output or --overwrite") from None
    names = [r["file_name"] for r in rows if not r["error"]]
    return Embeddings(names, vectors, {r["file_name"]: r["error"] for r in rows if r["error"]})


def merge_embeddings(parts: Sequence[Embeddings], order: Sequence[str]) -> Embeddings:
    """One `Embeddings` from several that may repeat an input (a later part wins): inputs
    in `order` first, then the others in the order the parts hold them."""
    latest: dict[str, tuple[np.ndarray | None, str]] = {}
    for part in parts:
        for name, vector in zip(part.names, part.vectors):
            latest[name] = (vector, "")
        for name, error in part.errors.items():
            latest[name] = (None, error)
    ranked = [n for n in dict.fromkeys(order) if n in latest]
    names = ranked + [n for n in latest if n not in set(ranked)]
    good = [n for n in names if latest[n][0] is not None]
    dim = next((p.vectors.shape[1] for p in parts if p.vectors.ndim == 2), 0)
    vectors = np.stack([latest[n][0] for n in good]) if good else np.zeros((0, dim), np.float32)
    return Embeddings(good, vectors.astype(np.float32, copy=False),
                      {n: latest[n][1] for n in names if latest[n][0] is None})


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
