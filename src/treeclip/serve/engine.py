"""What the server does with images, apart from HTTP: decode, embed in batches, remember
the embeddings of each upload, and classify them with `treeclip.predict`.

The model and the tree-of-life label embeddings load once, when the engine is made.
Each upload gets an id (the sha256 of its bytes, shortened); its embedding is kept in a
bounded LRU, so switching rank, k, subset or labels classifies the same embeddings again
without re-uploading or re-encoding anything.

Two precisions, as the policy says (`treeclip.runtime.precision`): /predict encodes at
`precision` (default `fast`), /embed always returns exact fp32 embeddings (default
`embed_precision`), from an fp32 encoder that shares the model's weights. Embeddings are
kept per (upload id, precision).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from treeclip.errors import InputError, TreeclipError
from treeclip.runtime.precision import VERB_DEFAULTS
from treeclip.serve.limits import UploadLimits
from treeclip.taxonomy.taxon import RANKS, Taxon


def upload_id(data: bytes) -> str:
    """A stable id for an upload: the same bytes always get the same id."""
    return hashlib.sha256(data).hexdigest()[:24]


@dataclass
class Embedded:
    """One upload the server has seen: its id, file name, L2-normalised embedding and the
    precision it was encoded at."""

    id: str
    file: str
    embedding: np.ndarray
    precision: str = "fp32"


class EmbeddingCache:
    """A thread-safe LRU of (upload id, precision) -> `Embedded`, at most `max_items`."""

    def __init__(self, max_items: int = 4096) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple[str, str], Embedded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, precisions: Sequence[str] = ("fp32",)) -> Embedded | None:
        """The upload's embedding at the first of `precisions` that is cached."""
        with self._lock:
            for precision in precisions:
                item = self._items.get((key, precision))
                if item is not None:
                    self._items.move_to_end((key, precision))
                    return item
            return None

    def put(self, item: Embedded) -> None:
        key = (item.id, item.precision)
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class LabelSetCache:
    """A small LRU of classifiers built for custom label lists, so a page that sends the
    same labels again (on every rank or k change) does not re-encode them."""

    def __init__(self, max_items: int = 16) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: tuple, make) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: encoding labels takes a while
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return value


class ServeEngine:
    """The model, the label set and the caches behind one server.

    Classification is `treeclip.predict`'s: a `TreeOfLifeClassifier` over the taxa table
    (sums to any rank, roll-up), `CustomLabelsClassifier` for the user's own labels. The
    engine only adds what a server needs: embeddings that outlive a request, and
    classifiers for subsets and label lists kept ready for the next request."""

    def __init__(self, model: str | Path | Any, *, taxa: str | Path | Sequence[Taxon] | None = None,
                 device: str = "cpu", precision: str = VERB_DEFAULTS["serve"],
                 embed_precision: str = VERB_DEFAULTS["serve-embed"], limits: UploadLimits | None = None,
                 cache_size: int = 4096, label_cache_dir: str | Path | None = None,
                 templates: str | Sequence[str] = "openai") -> None:
        from treeclip.model import load_model
        from treeclip.predict.classifiers import TreeOfLifeClassifier
        from treeclip.predict.labels import load_taxa
        from treeclip.runtime.encoder import ImageEncoder
        from treeclip.runtime.precision import resolve_device

        self.limits = limits or UploadLimits()
        device = str(resolve_device(device))
        if isinstance(model, (str, Path)):
            self.model_spec = str(model)
            # fp32 weights on the serving device: the text tower and the classifiers made
            # later share them; only the image tower may get a bf16 copy (the encoder's)
            self.clip = load_model(self.model_spec, device=device)
        else:
            self.model_spec, self.clip = getattr(model, "name", "model"), model
        if taxa is None or isinstance(taxa, (str, Path)):
            taxa = load_taxa(str(taxa) if taxa is not None else None, self.model_spec)
        if isinstance(templates, str):
            from treeclip.taxonomy.templates import load_templates

            try:
                templates = load_templates(templates)
            except ValueError as err:
                raise TreeclipError(str(err)) from None
        self._options = {"device": device, "precision": precision, "templates": tuple(templates),
                         "cache_dir": str(label_cache_dir) if label_cache_dir else None}
        self.tree = TreeOfLifeClassifier(self.clip, list(taxa), **self._options)
        self.encoders = {"predict": self.tree.encoder}
        if embed_precision == precision:
            self.encoders["embed"] = self.tree.encoder
        else:  # fp32 on the serving device shares the model's weights: no copy
            self.encoders["embed"] = ImageEncoder(self.clip, device=device, precision=embed_precision,
                                                  cache_dir=self._options["cache_dir"])
        # classifiers for subsets and custom labels never encode images (the tree's encoder
        # does), so they need no image-tower copy of their own: fp32 shares the model
        self._label_options = {**self._options, "precision": "fp32"}
        self.embeddings = EmbeddingCache(cache_size)
        self.classifiers = LabelSetCache()
        self._search_names: list[str] | None = None

    @property
    def taxa(self) -> list[Taxon]:
        return self.tree.taxa

    # -- images ----------------------------------------------------------------------
    def preprocess(self, data: bytes, name: str):
        """Decode one upload (safely, pixel-capped) into the model's input tensor; raises
        `InputError("<name>: <reason>")`."""
        from treeclip.data.images import decode_image

        img = decode_image(data, name=name, max_pixels=self.limits.max_pixels, draft_size=self.clip.image_size)
        return self.clip.preprocess(img)

    @property
    def precisions(self) -> dict[str, str]:
        """The precision each endpoint runs at: `{"predict": ..., "embed": ...}`."""
        return {use: enc.precision for use, enc in self.encoders.items()}

    def cached(self, key: str, use: str) -> Embedded | None:
        """A kept embedding of upload `key` fit for `use`: /predict takes its own precision
        or an exact one, /embed only the exact one."""
        wanted = [self.encoders[use].precision]
        if use == "predict":
            wanted.append(self.encoders["embed"].precision)
        return self.embeddings.get(key, wanted)

    def encode_batch(self, jobs: list[tuple[str, Any]]) -> list[np.ndarray]:
        """Embeddings of (use, preprocessed image) pairs, `use` "predict" or "embed" (the
        micro-batcher's batch function): one model call per encoder in the batch."""
        import torch

        out: list[np.ndarray | None] = [None] * len(jobs)
        for use, encoder in self.encoders.items():
            picked = [i for i, (u, _) in enumerate(jobs) if u == use]
            if picked:
                vectors = encoder(torch.stack([jobs[i][1] for i in picked])).numpy().astype(np.float32, copy=False)
                for i, vec in zip(picked, vectors):
                    out[i] = vec
        return out  # type: ignore[return-value]

    # -- classification ----------------------------------------------------------------
    def subset_spec(self, subset: str) -> str:
        """A web subset (`Aves`, `class=Aves`, `order=Lepidoptera,Coleoptera`) as a
        `RANK=NAMES` spec. Never a file path: the server must not open files a client names."""
        rank, sep, names = subset.partition("=")
        if sep:
            rank = rank.strip().lower()
            if rank not in RANKS:
                raise TreeclipError(f"subset {subset!r}: unknown rank {rank!r}; expected one of {', '.join(RANKS)}")
            return f"{rank}={names.strip()}"
        low = " ".join(subset.split()).lower()
        for depth, rank in enumerate(RANKS[:-1]):
            if any(t.lineage[depth].lower() == low for t in self.tree.taxa):
                return f"{rank}={subset.strip()}"
        if any(t.scientific_name.lower() == low for t in self.tree.taxa):
            return f"species={subset.strip()}"
        raise TreeclipError(f"subset {subset!r}: no taxon of that name in the label set")

    def _classifier(self, subset: str | None, labels: Sequence[str] | None):
        from treeclip.predict.classifiers import CustomLabelsClassifier, TreeOfLifeClassifier

        if labels:
            key = ("labels", *labels)
            return self.classifiers.get_or_make(
                key, lambda: CustomLabelsClassifier(self.clip, list(labels), **self._label_options))
        if subset:
            spec = self.subset_spec(subset)
            return self.classifiers.get_or_make(
                ("subset", spec), lambda: TreeOfLifeClassifier(self.clip, self.tree.taxa, subset=spec,
                                                     **self._label_options))
        return self.tree

    def classify(self, items: Sequence[Embedded], *, rank: str = "species", k: int = 5,
                 subset: str | None = None, labels: Sequence[str] | None = None,
                 threshold: float | None = None) -> list[dict]:
        """Per item: `{"id", "file", "predictions": [rows], "rollup": row | None, "error": None}`;
        rows are `treeclip predict`'s JSON Lines rows (`file_name`, ranks or
        `classification`, `score`), the roll-up row adds `rank`."""
        if not items:
            return []
        import torch

        clf = self._classifier(subset, labels)
        probs = clf.probabilities(torch.from_numpy(np.stack([it.embedding for it in items])))
        top = clf.rows_for(probs, rank=rank, k=k)
        rolled = clf.rows_for(probs, rollup=threshold) if threshold is not None and not labels else None
        out = []
        for n, it in enumerate(items):
            out.append({"id": it.id, "file": it.file,
                        "predictions": [{"file_name": it.file, **row} for row in top[n]],
                        "rollup": {"file_name": it.file, **rolled[n][0]} if rolled else None,
                        "error": None})
        return out

    # -- label set search ------------------------------------------------------------
    def search_taxa(self, q: str, *, limit: int = 20) -> tuple[int, list[dict]]:
        """Taxa whose scientific name, any rank name or common name contains `q`
        (case-insensitive); exact, then prefix, then substring matches, each in label-set
        order. Returns (total, the first `limit`)."""
        q = " ".join(q.lower().split())
        if not q:
            return 0, []
        if self._search_names is None:
            # one lower-cased line per name and taxon, built once: a substring test per
            # taxon is then a C-level scan, fast enough per keystroke on 450k taxa
            self._search_names = [
                "\n".join(n.lower() for n in (t.scientific_name, t.common, *t.lineage) if n) for t in self.taxa]
        scored = []
        for i, names in enumerate(self._search_names):
            if q in names:
                lines = names.split("\n")
                best = 0 if q in lines else 1 if any(n.startswith(q) for n in lines) else 2
                scored.append((best, i))
        scored.sort()
        return len(scored), [taxon_json(self.taxa[i]) for _, i in scored[:limit]]


def taxon_json(t: Taxon) -> dict:
    """A taxon as the API shows it: the seven ranks, `common`, and `name` (scientific)."""
    return {**dict(zip(RANKS, t.lineage)), "common": t.common, "name": t.scientific_name}


def check_labels(labels: Sequence[str], limits: UploadLimits) -> list[str]:
    """Clean custom labels (stripped, blank and repeated ones dropped); raises
    `TreeclipError` when there are more than the cap."""
    seen: dict[str, None] = {}
    for label in labels:
        label = " ".join(label.split())
        if label:
            seen.setdefault(label, None)
    if len(seen) > limits.max_labels:
        raise TreeclipError(f"too many custom labels: {len(seen)} > {limits.max_labels}")
    return list(seen)


__all__ = ["ServeEngine", "EmbeddingCache", "Embedded", "upload_id", "taxon_json", "check_labels", "InputError"]
