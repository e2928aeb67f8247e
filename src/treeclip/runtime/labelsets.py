"""Tree-of-life label sets in the published BioCLIP layout: read, score, write.

The layout (pybioclip's; TreeOfLife-10M and TreeOfLife-200M ship it in `embeddings/`):

    txt_emb_species.npy    float array (embed_dim, n_taxa): logits = image_features @ array
    txt_emb_species.json   one entry per column: [[kingdom, ..., genus, species_epithet], common]

A folder may also hold label sets named per model, `txt_emb_<model>.{npy,json}` (e.g.
`txt_emb_bioclip-2.5-vit-h-14.*` beside `txt_emb_species.*`, as pybioclip's next release
reads them): for a model, its own set is taken when the folder has one, else the
`species` set (`find_pair(folder, prefer=model_label_names(spec))`).

treeclip writes the same pair into a model dir (`write_model_labels`), next to
`taxa.parquet`, plus `txt_emb_species.treeclip.json` saying which model, templates and
text type made the embeddings, so a stale pair is never used for another model.

Reading is cheap however large the set: the array is memory-mapped, never copied, and
scored a block of rows at a time with the pages of each block released after use
(`LabelMatrix`), so resident memory stays near one block plus a (batch x n_taxa) result.
The JSON is parsed once into columns (`TaxaColumns`) kept in the labels cache,
`CachePaths.labels/taxa-<key>.npz`, keyed by the cache format and the JSON file's
size, mtime and a sha256 of its first and last MiB.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from treeclip.cache import CachePaths, caches_or_default
from treeclip.errors import TreeclipError
from treeclip.fsutil import atomic_path, write_json_atomic, write_npy_atomic, write_text_atomic
from treeclip.log import get_logger
from treeclip.runtime.taxa_columns import TaxaColumns
from treeclip.taxonomy.taxon import RANKS, Taxon

log = get_logger(__name__)

LABEL_SET_PREFIX = "txt_emb_"
DEFAULT_SET = "species"
EMBEDDINGS_FILE = f"{LABEL_SET_PREFIX}{DEFAULT_SET}.npy"
NAMES_FILE = f"{LABEL_SET_PREFIX}{DEFAULT_SET}.json"
META_FILE = "txt_emb_species.treeclip.json"
TAXA_FILE = "taxa.parquet"
DEFAULT_TEMPLATES = "openai"
"""OpenAI's 80 ImageNet templates, as BioCLIP's and pybioclip's label embeddings use."""
DEFAULT_TEXT_TYPE = "taxon_com"
"""BioCLIP's tree-of-life label names: the 7 ranks plus the common name."""
COLUMNS_FORMAT = 1
"""Format version of the cached columns of a names JSON; part of every key."""
BLOCK_BYTES = 256 << 20
"""How much of a label matrix is resident at a time while scoring."""


@dataclass
class LabelSet:
    """The taxa a tree-of-life classifier chooses among, with their label embeddings when
    they are precomputed (`embeddings`, (dim, n), memory-mapped when read from a file),
    or None when they must be encoded from the taxon names (`taxa`, for tables)."""

    columns: TaxaColumns
    embeddings: np.ndarray | None = None
    source: str = "taxa"
    taxa: list[Taxon] | None = field(default=None, repr=False)

    @classmethod
    def of_taxa(cls, taxa: Sequence[Taxon], source: str = "taxa") -> "LabelSet":
        """Taxa whose label embeddings are still to be encoded."""
        taxa = list(taxa)
        return cls(TaxaColumns.from_taxa(taxa), None, source, taxa)

    def __len__(self) -> int:
        return len(self.columns)


# -- finding and reading the layout ---------------------------------------------------------
def label_set_names(folder: str | os.PathLike) -> list[str]:
    """The names of the label sets in `folder` (`species` for `txt_emb_species.*`), sorted:
    those with both files there."""
    folder = Path(folder)
    names = {p.name[len(LABEL_SET_PREFIX):-len(".npy")] for p in folder.glob(f"{LABEL_SET_PREFIX}*.npy")}
    return sorted(n for n in names if (folder / f"{LABEL_SET_PREFIX}{n}.json").is_file())


def model_label_names(model_spec: str | None) -> tuple[str, ...]:
    """The label-set names that belong to a model spec, most specific first: the repo name
    of `hf-hub:ORG/NAME`, a model dir's or file's name, a registered name."""
    if not model_spec:
        return ()
    text = str(model_spec).rstrip("/")
    name = text.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return (name.lower(),) if name and name.lower() != DEFAULT_SET else ()


def find_pair(path: str | os.PathLike, prefer: Sequence[str] = ()) -> tuple[Path, Path] | None:
    """(npy, json) a path names: either file of the pair, or a folder holding a pair (or an
    `embeddings/` folder that does, as a published dataset repo): the first set of
    `prefer` (model-named sets) it holds, else `txt_emb_species`; None if it names none."""
    p = Path(path)
    if p.is_dir():
        for base in (p, p / "embeddings"):
            for name in (*prefer, DEFAULT_SET):
                npy, names = base / f"{LABEL_SET_PREFIX}{name}.npy", base / f"{LABEL_SET_PREFIX}{name}.json"
                if name != DEFAULT_SET and not (npy.is_file() and names.is_file()):
                    continue
                if npy.exists() or names.exists():
                    return npy, names
        return None
    if p.suffix.lower() in (".npy", ".json"):
        return p.with_suffix(".npy"), p.with_suffix(".json")
    return None


def hub_label_set(spec: str, what: str | None = None, *, hub_dir: str | os.PathLike | None = None,
                  prefer: Sequence[str] = ()) -> tuple[Path, Path]:
    """(npy, json) of the label set in dataset repo `hf-hub:ORG/NAME`'s snapshot in the
    local Hugging Face cache (`embeddings/` or the top; `hub_dir` searched first): the
    first model-named set of `prefer` it holds, else `txt_emb_species`; one line naming
    every place looked when absent. `what` names the set in that line."""
    from treeclip.errors import TreeclipError
    from treeclip.model.hub import LABEL_SET_FOLDER, find_snapshot

    def files(name: str) -> list[tuple[str, str]]:
        pair = (f"{LABEL_SET_PREFIX}{name}.npy", f"{LABEL_SET_PREFIX}{name}.json")
        return [(f"{LABEL_SET_FOLDER}/{f}", f) for f in pair]

    for name in prefer:  # a set named for the model, when the repo has one
        try:
            return find_pair(find_snapshot(spec, "dataset", files(name), what=name, hub=hub_dir),  # type: ignore[return-value]
                             prefer=(name,))
        except TreeclipError:
            continue
    what = f"{what or 'the label set'} ({LABEL_SET_FOLDER}/{EMBEDDINGS_FILE} and {NAMES_FILE})"
    return find_pair(find_snapshot(spec, "dataset", files(DEFAULT_SET), what=what, hub=hub_dir))  # type: ignore[return-value]


def read_label_set(npy: str | os.PathLike, names: str | os.PathLike, *,
                   caches: CachePaths | None = None, progress: bool = True) -> LabelSet:
    """The label set of a `txt_emb_species` pair: the array memory-mapped, the names as
    columns (parsed once, then read from the labels cache)."""
    npy, names = Path(npy), Path(names)
    missing = [str(p) for p in (npy, names) if not p.is_file()]
    if missing:
        raise TreeclipError(f"{' and '.join(missing)}: not found; a label set is the pair "
                            f"{EMBEDDINGS_FILE} + {NAMES_FILE}")
    try:
        array = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise TreeclipError(f"{npy}: not a readable .npy array ({str(err).splitlines()[0][:120]})") from None
    if array.ndim != 2 or array.dtype.kind != "f" or array.shape[1] == 0:
        raise TreeclipError(f"{npy}: expected a float array of shape (embed_dim, n_taxa), got "
                            f"{array.dtype} {array.shape}")
    columns = cached_columns(names, caches=caches, progress=progress)
    if len(columns) != array.shape[1]:
        raise TreeclipError(f"{names}: {len(columns)} taxa, but {npy} has {array.shape[1]} columns "
                            f"(shape {array.shape}); the two files must come from the same release")
    return LabelSet(columns, array, str(names.parent))


def read_names(path: Path) -> TaxaColumns:
    """Columns of a names JSON: a list of `[[7 ranks], common]` (null = empty)."""
    try:
        with open(path, "rb") as fh:
            entries = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TreeclipError(f"{path}: not valid JSON ({str(err)[:120]})") from None
    if not isinstance(entries, list) or not entries:
        raise TreeclipError(f"{path}: expected a non-empty list of [[kingdom..species_epithet], common]")
    width = len(RANKS)
    for i, e in enumerate(entries):
        if not (type(e) is list and len(e) == 2 and type(e[0]) is list and len(e[0]) == width):
            raise TreeclipError(f"{path}: entry {i} is not [[{width} rank names], common name]: {str(e)[:80]}")
    lineages = [e[0] for e in entries]
    columns: dict[str, Iterable] = {r: map(itemgetter(d), lineages) for d, r in enumerate(RANKS)}
    columns["common"] = map(itemgetter(1), entries)
    return TaxaColumns.from_names(columns, len(entries))


def _columns_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(json.dumps([COLUMNS_FORMAT, st.st_size, st.st_mtime_ns]).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read())
    return h.hexdigest()[:40]


def cached_columns(path: str | os.PathLike, *, caches: CachePaths | None = None,
                   progress: bool = True) -> TaxaColumns:
    """The columns of a names JSON, from the labels cache when this file was read before."""
    path = Path(path)
    entry = caches_or_default(caches).labels / f"taxa-{_columns_key(path)}.npz"
    try:
        return TaxaColumns.load(entry)[0]
    except (OSError, ValueError, KeyError):
        pass  # absent or damaged: parse again
    if progress:
        log.info(f"reading the taxa of {path} (once; kept in {entry.parent})")
    columns = read_names(path)
    try:
        columns.save(entry)
    except OSError as err:  # a read-only cache costs time on the next run, nothing else
        log.warning(f"cannot cache the taxa of {path} in {entry.parent} ({err.strerror or err})")
    return columns


# -- scoring -----------------------------------------------------------------------------
def _release(array: np.ndarray, start: int, stop: int) -> None:
    """Drop the resident pages of bytes [start, stop) of a memory-mapped array's file from
    this process (they stay in the page cache, so reading them again is cheap)."""
    mm = getattr(array, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    base = array.offset % mmap.ALLOCATIONGRANULARITY  # where the data starts in the mapping
    start, stop = base + start, min(base + stop, len(mm))
    start -= start % mmap.PAGESIZE
    if stop > start:
        mm.madvise(mmap.MADV_DONTNEED, start, stop - start)


class LabelMatrix:
    """Softmax probabilities of image features against a (dim, n) label matrix, computed
    `block_bytes` of the matrix at a time; a memory-mapped matrix never becomes resident
    as a whole."""

    def __init__(self, matrix: np.ndarray, block_bytes: int | None = None) -> None:
        self.matrix = matrix
        block_bytes = block_bytes or BLOCK_BYTES
        dim, n = matrix.shape
        self.rows = max(1, min(dim, block_bytes // max(1, n * matrix.dtype.itemsize)))
        self.images = max(1, block_bytes // max(1, n * 4))  # images scored per pass over the matrix

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(B, dim) features -> (B, n) float32 `features @ matrix`."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        dim, n = self.matrix.shape
        out = np.empty((len(features), n), np.float32)
        part = np.empty_like(out) if self.rows < dim else None
        for r0 in range(0, dim, self.rows):
            r1 = min(dim, r0 + self.rows)
            block = np.asarray(self.matrix[r0:r1], dtype=np.float32)
            np.matmul(features[:, r0:r1], block, out=out if r0 == 0 else part)
            if r0:
                out += part
            itemsize = self.matrix.dtype.itemsize
            _release(self.matrix, r0 * n * itemsize, r1 * n * itemsize)
        return out

    def probabilities(self, features: np.ndarray, scale: float, columns: np.ndarray | None = None) -> np.ndarray:
        """softmax(scale * features @ matrix[:, columns]) per image, float32 (B, len(columns));
        `self.images` images per pass, so a huge batch never needs a huge logit matrix."""
        features = np.asarray(features, dtype=np.float32)
        if len(features) > self.images:
            return np.concatenate([self.probabilities(features[i:i + self.images], scale, columns)
                                   for i in range(0, len(features), self.images)])
        logits = self.logits(features)
        if columns is not None and len(columns) < logits.shape[1]:
            logits = np.take(logits, columns, axis=1)
        logits *= np.float32(scale)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits


def dense_rows(matrix: np.ndarray, columns: np.ndarray, block_bytes: int | None = None) -> np.ndarray:
    """(len(columns), dim) float32 copy of `matrix[:, columns].T`, read a block of rows at
    a time (for a subset small enough to keep in memory)."""
    block_bytes = block_bytes or BLOCK_BYTES
    dim, n = matrix.shape
    out = np.empty((len(columns), dim), np.float32)
    rows = max(1, min(dim, block_bytes // max(1, n * matrix.dtype.itemsize)))
    for r0 in range(0, dim, rows):
        r1 = min(dim, r0 + rows)
        out[:, r0:r1] = np.asarray(matrix[r0:r1])[:, columns].T
        _release(matrix, r0 * n * matrix.dtype.itemsize, r1 * n * matrix.dtype.itemsize)
    return out


# -- writing -----------------------------------------------------------------------------
def write_label_set(out_dir: str | os.PathLike, taxa: Sequence[Taxon], embeddings: np.ndarray,
                    meta: dict | None = None) -> tuple[Path, Path]:
    """Write `taxa` and their (n, dim) label embeddings as the pair pybioclip reads (the
    array transposed to (dim, n) float32), atomically; `meta` goes to META_FILE last."""
    out = Path(out_dir)
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(taxa):
        raise ValueError(f"{len(taxa)} taxa but embeddings of shape {emb.shape}")
    write_text_atomic(out / NAMES_FILE, json.dumps([[list(t.lineage), t.common] for t in taxa], ensure_ascii=False))
    write_npy_atomic(out / EMBEDDINGS_FILE, np.ascontiguousarray(emb.T))
    if meta is not None:
        write_json_atomic(out / META_FILE, meta)
    return out / EMBEDDINGS_FILE, out / NAMES_FILE


def write_model_labels(clip, model_dir: str | os.PathLike, dataset_dir: str | os.PathLike, *,
                       templates: str = DEFAULT_TEMPLATES, text_type: str = DEFAULT_TEXT_TYPE,
                       caches: CachePaths | None = None, progress: bool = False) -> Path:
    """Put the dataset's taxa and their label embeddings under `clip` into a saved model
    dir: `taxa.parquet` (the dataset's own, copied) and the `txt_emb_species` pair (taxa in
    lineage order, names of `text_type` through `templates`; the label cache is shared with
    `treeclip predict`), so `treeclip predict MODEL_DIR photos/` needs no `--taxa` and
    pybioclip-style tools can read the labels. Call it after `save_model(clip, model_dir)`."""
    from treeclip.data.dataset import read_taxa
    from treeclip.runtime.labels import label_embeddings
    from treeclip.taxonomy.templates import load_templates

    out = Path(model_dir)
    taxa = list(dict.fromkeys(read_taxa(dataset_dir)))
    taxa = [taxa[i] for i in TaxaColumns.from_taxa(taxa).lineage_order()]
    chosen = load_templates(templates)
    emb = label_embeddings(clip, [t.name(text_type) for t in taxa], chosen, caches=caches, progress=progress)
    with atomic_path(out / TAXA_FILE, suffix=".parquet") as tmp:
        shutil.copyfile(Path(dataset_dir) / TAXA_FILE, tmp)
    meta = {"format": 1, "model_fingerprint": clip.fingerprint(), "templates": list(chosen),
            "text_type": text_type, "n_taxa": len(taxa), "embed_dim": int(emb.shape[1])}
    write_label_set(out, taxa, emb, meta)
    return out


def pair_fits(folder: str | os.PathLike, templates: Sequence[str], text_type: str) -> bool:
    """Whether a treeclip-written pair in a model dir was made by the model saved there
    (its `treeclip.json` fingerprint) with these templates and this text type."""
    from treeclip.model.checkpoint import META_FILE as MODEL_META_FILE

    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        saved = json.loads((folder / MODEL_META_FILE).read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (meta.get("model_fingerprint") == saved and meta.get("templates") == list(templates)
            and meta.get("text_type") == text_type)
