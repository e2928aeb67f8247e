"""Text embeddings of labels and their one cache, used by predict, evaluate and serve.

A label's embedding is BioCLIP's zero-shot class embedding: the mean of the L2-normalised
text embeddings of the label put through every template, renormalised.

The cache (`CachePaths.labels`, by default `$TREECLIP_CACHE/labels`): `<key>.npy` (embeddings)
+ `<key>.names.parquet` (the labels, checked on read), where the key is a sha256 of the
cache format version, the model fingerprint, the templates and the label texts, so a
second run with the same model and labels encodes nothing. Large label sets are encoded in
chunks saved as they finish (`<key>.parts/`), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from treeclip.cache import CachePaths, caches_or_default
from treeclip.errors import TreeclipError
from treeclip.fsutil import atomic_path, write_npy_atomic
from treeclip.log import progress_bar
from treeclip.runtime.parts import PartStore, fill_by_parts

LABELS_FORMAT = 3
"""Format version of the label-embedding cache; part of every key (3: open_clip's
zero-shot builder, whose torch sums round apart from the numpy ones of 2)."""

TextEncoder = Callable[[list[str]], "np.ndarray"]


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero (no NaNs)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.where(norm == 0, 1, norm)


def class_embeddings(encode_texts: TextEncoder, names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(n_classes, dim) float32: per class the mean over templates of the L2-normalised
    text embeddings, renormalised: open_clip's own `build_zero_shot_classifier`
    (transposed), fed by `encode_texts`, which maps captions to embeddings (e.g.
    `ClipModel.encode_texts`, treeclip's length-grouped text path: 3.6x open_clip's
    padded one, benchmarks/text_and_vit_paths.py)."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    if not names or not templates:
        raise ValueError("class_embeddings needs at least one class name and one template")
    weights = build_zero_shot_classifier(_TextTower(encode_texts), _Captions, list(names), list(templates),
                                         num_classes_per_batch=None)
    return weights.T.float().numpy()


class _Captions(list):
    """What the builder's `tokenizer(texts).to(device)` returns here: the captions
    themselves, for `encode_texts` to tokenise (grouped by length)."""

    def to(self, device) -> "_Captions":
        return self


class _TextTower:
    """The `model.encode_text(texts, normalize=True)` open_clip's builder calls, as
    `encode_texts` (any caption encoder: its output is normalised here)."""

    def __init__(self, encode_texts: TextEncoder) -> None:
        self.encode_texts = encode_texts

    def encode_text(self, texts: _Captions, normalize: bool = False):
        import torch
        import torch.nn.functional as F

        emb = torch.as_tensor(np.asarray(_to_numpy(self.encode_texts(list(texts))), dtype=np.float32))
        return F.normalize(emb, dim=-1) if normalize else emb


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def cache_key(model_fingerprint: str, texts: Sequence[str], templates: Sequence[str]) -> str:
    """sha256 hex over the cache format, the model, the templates and the label texts (in order)."""
    h = hashlib.sha256()
    h.update(json.dumps([LABELS_FORMAT, model_fingerprint, list(templates)]).encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def label_embeddings(clip, texts: Sequence[str], templates: Sequence[str], *,
                     caches: CachePaths | None = None, persist: bool = True, chunk: int = 512,
                     progress: bool = True) -> np.ndarray:
    """(n_labels, dim) float32 class embeddings of `texts` under `clip`, read from the cache
    (`caches.labels`; None: the default caches) when this model, these texts and templates
    were encoded before. `persist=False` computes them without reading or writing any file
    (labels sent by a web client must not fill the shared cache)."""
    texts, templates = list(texts), list(templates)
    if not texts:
        raise TreeclipError("no labels to embed")
    out = np.zeros((len(texts), clip.embed_dim), dtype=np.float32)
    compute = lambda start, stop: (class_embeddings(clip.encode_texts, texts[start:stop], templates), None)  # noqa: E731
    if not persist:
        fill_by_parts(out, chunk, compute, None)
        return out
    root = caches_or_default(caches).labels
    stem = cache_key(clip.fingerprint(), texts, templates)[:40]
    final, names = root / f"{stem}.npy", root / f"{stem}.names.parquet"
    cached = _load_cached(final, names, texts, clip.embed_dim)
    if cached is not None:
        return cached
    parts = PartStore(root / f"{stem}.parts")
    # small label sets take a moment: no bar
    with progress_bar(len(texts), desc="embedding labels", unit="label", enabled=progress and len(texts) >= 1000,
                      leave=False) as bar:
        fill_by_parts(out, chunk, compute, parts, done=bar.update)
    _save_cache(final, names, texts, out)
    parts.clear()
    return out


def _load_cached(final: Path, names: Path, texts: list[str], dim: int) -> np.ndarray | None:
    if not (final.is_file() and names.is_file()):
        return None
    try:
        import pyarrow.parquet as pq

        stored = pq.read_table(names).column("label").to_pylist()
        emb = np.load(final, allow_pickle=False)
    except Exception:
        return None  # a damaged cache entry is recomputed, never trusted
    if stored != texts or emb.shape != (len(texts), dim):
        return None
    return emb.astype(np.float32, copy=False)


def _save_cache(final: Path, names: Path, texts: list[str], emb: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(names, suffix=".parquet") as tmp:
        pq.write_table(pa.table({"label": texts}), tmp)
    write_npy_atomic(final, emb)
