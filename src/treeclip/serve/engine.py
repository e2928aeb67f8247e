"""What the server does, apart from HTTP: embed uploads through one image pipeline,
classify the embeddings with `treeclip.predict`, search the label set.

The model and the tree-of-life label embeddings load once, when the engine is made.
Each upload gets an id (the sha256 of its bytes, shortened); its embedding is kept in a
bounded LRU, so switching rank, k, subset or labels classifies the same embeddings again
without re-uploading or re-encoding anything (`treeclip.serve.pipeline`).

Two precisions, as the policy says (`treeclip.runtime.precision`): /predict encodes at
`precision` (default `fast`), /embed always returns exact fp32 embeddings (default
`embed_precision`), from an fp32 encoder that shares the model's weights. Embeddings are
kept per (upload id, precision).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from fastapi.concurrency import run_in_threadpool

from treeclip.cache import CachePaths, caches_or_default
from treeclip.errors import TreeclipError
from treeclip.runtime.options import InferenceOptions
from treeclip.runtime.precision import VERB_DEFAULTS
from treeclip.serve.batcher import MicroBatcher
from treeclip.serve.caches import EmbeddingCache, LabelSetCache
from treeclip.serve.forms import PredictRequest
from treeclip.serve.limits import UploadError, UploadLimits, status_for
from treeclip.serve.pipeline import Embedded, Failed, ImagePipeline, Upload
from treeclip.taxonomy.taxon import RANKS, Taxon


class ServeEngine:
    """The model, the label set, the image pipeline and the caches behind one server.

    Classification is `treeclip.predict`'s: a `TreeOfLifeClassifier` over the taxa table
    (sums to any rank, roll-up), `CustomLabelsClassifier` for the user's own labels. The
    engine adds what a server needs: one image pipeline (`ImagePipeline`: uploads to
    embeddings, micro-batched) whose embeddings outlive a request, and classifiers for
    subsets and label lists kept ready for the next request, built by one label worker
    thread. `start()`/`stop()` run the pipeline (batcher, decode threads) and the label
    worker on the serving event loop (the app's lifespan calls them)."""

    def __init__(self, model: str | Path | Any, *, taxa: str | Path | Sequence[Taxon] | None = None,
                 options: InferenceOptions | None = None, embed_precision: str = VERB_DEFAULTS["serve-embed"],
                 caches: CachePaths | None = None, limits: UploadLimits | None = None, cache_size: int = 4096,
                 max_batch: int = 32, max_wait_ms: float = 5.0, label_sets: int = 16,
                 decode_threads: int | None = None, head: str | Path | None = None) -> None:
        """`options`: device, /predict's precision and the templates (default
        `InferenceOptions.for_verb("serve")`); `embed_precision`: /embed's; `caches`: label
        embeddings, exported graphs and the hub folder (default: the environment's);
        `head`: a head folder from `treeclip fit`, offered as /predict's `head` mode."""
        from treeclip.predict.classifiers import TreeOfLifeClassifier
        from treeclip.runtime.precision import resolve_device

        options = options or InferenceOptions.for_verb("serve")
        self.options = options = options.replace(device=str(resolve_device(options.device)))
        self.caches = caches = caches_or_default(caches)
        self.limits = limits or UploadLimits()
        self.model_spec, self.clip = _load(model, options.device, caches)
        self.model_name = _public_name(self.clip)
        if taxa is None or isinstance(taxa, (str, Path)):
            from treeclip.predict.labels import load_label_source

            # the model's own label set (its dir's, or the published one) or the one named
            taxa = load_label_source(str(taxa) if taxa is not None else None, self.model_spec,
                                     templates=options.template_texts(), caches=caches)
        self.tree = TreeOfLifeClassifier(self.clip, taxa, options=options, caches=caches)
        self.pipeline = ImagePipeline(self.clip, self._encoders(embed_precision), self.limits, cache_size=cache_size,
                                      max_batch=max_batch, max_wait_s=max_wait_ms / 1000,
                                      decode_threads=decode_threads)
        # classifiers for subsets, custom labels and heads never encode images (the tree's
        # encoder does), so they need no image tower of their own: torch fp32 shares the model
        self._label_options = options.replace(precision="fp32", backend="torch")
        self.head = self._head(head)
        self.classifiers = LabelSetCache(label_sets)
        self._label_worker: ThreadPoolExecutor | None = None
        self._search_names: np.ndarray | None = None

    def _head(self, head: str | Path | None):
        """The `HeadClassifier` of a fitted head folder (checked against the model), or None."""
        if head is None:
            return None
        from treeclip.predict.classifiers import HeadClassifier

        return HeadClassifier(self.clip, str(head), options=self._label_options, caches=self.caches)

    def _encoders(self, embed_precision: str) -> dict[str, Any]:
        """{"predict": the tree's encoder, "embed": one at `embed_precision`}."""
        from treeclip.runtime.encoder import ImageEncoder

        if embed_precision == self.options.precision:
            return {"predict": self.tree.encoder, "embed": self.tree.encoder}
        # fp32 on the serving device shares the model's weights: no copy
        embed = ImageEncoder(self.clip, device=self.options.device, precision=embed_precision, caches=self.caches,
                             backend=self.options.backend)
        return {"predict": self.tree.encoder, "embed": embed}

    async def start(self) -> None:
        # one thread builds classifiers for subsets and label lists: one text-encoder job
        # at a time, however many requests bring new labels
        self._label_worker = ThreadPoolExecutor(1, thread_name_prefix="treeclip-labels")
        await self.pipeline.start()

    async def stop(self) -> None:
        await self.pipeline.stop()
        if self._label_worker is not None:
            self._label_worker.shutdown(wait=False, cancel_futures=True)
            self._label_worker = None

    @property
    def taxa(self) -> list[Taxon]:
        """The label taxa as `Taxon` objects (built on first use: slow for huge sets)."""
        return self.tree.taxa

    @property
    def encoders(self) -> dict[str, Any]:
        """The image encoder of each use: `{"predict": ..., "embed": ...}`."""
        return self.pipeline.encoders

    @property
    def embeddings(self) -> EmbeddingCache:
        """The kept upload embeddings (an LRU per upload id and precision)."""
        return self.pipeline.embeddings

    @property
    def batcher(self) -> MicroBatcher:
        """The micro-batcher every image encoder call goes through."""
        return self.pipeline.batcher

    @property
    def precisions(self) -> dict[str, str]:
        """The precision each endpoint runs at: `{"predict": ..., "embed": ...}`."""
        return {use: enc.precision for use, enc in self.encoders.items()}

    @property
    def backends(self) -> dict[str, str]:
        """Who runs each endpoint's image tower (`runtime.backends`): `{"predict": ..., "embed": ...}`."""
        return {use: enc.backend for use, enc in self.encoders.items()}

    def cached(self, key: str, use: str) -> Embedded | None:
        """A kept embedding of upload `key` fit for `use` (see `ImagePipeline.cached`)."""
        return self.pipeline.cached(key, use)

    # -- requests ------------------------------------------------------------------------
    async def predict(self, files: Sequence[Upload], ids: Sequence[str], request: PredictRequest) -> dict:
        """The /predict answer: one entry per image, the `ids` first, then the `files`,
        classified as `request` asks. Raises `UploadError` for a refused request
        (the caller has checked the number of images: `forms.predict_images`)."""
        known = [self.cached(i, "predict") for i in ids]
        missing = [i for i, k in zip(ids, known) if k is None]
        if missing:
            raise UploadError(404, f"unknown image id {missing[0]}: upload the file again"
                              + (f" ({len(missing)} ids unknown)" if len(missing) > 1 else ""))
        uploaded = await self.pipeline.embed(files, "predict")
        if not ids:
            _refuse_if_all_failed(uploaded)
        items: list[Embedded | Failed] = [*known, *uploaded]
        good = [it for it in items if isinstance(it, Embedded)]
        try:
            if request.head and self.head is None:
                raise TreeclipError("this server has no fitted head: start it with --head HEAD/")
            if request.head and (request.subset or request.labels):
                raise TreeclipError("head mode classifies among the head's classes: no subset or labels with it")
            clf = self.head if request.head else (await self.classifier(request.subset, request.labels)
                                                  if good else None)
            shaped = await run_in_threadpool(self.classify, good, request, classifier=clf)
        except TreeclipError as err:
            raise UploadError(400, str(err)) from None
        rows = iter(shaped)
        images = [next(rows) if isinstance(it, Embedded) else _error_entry(it) for it in items]
        return {"model": self.model_name, "precision": self.encoders["predict"].precision,
                "mode": "head" if request.head else "custom" if request.labels else "tree-of-life",
                "rank": request.rank, "k": request.k, "threshold": request.threshold,
                "subset": request.subset, "images": images, "failed": _failures(items)}

    async def embed(self, files: Sequence[Upload]) -> dict:
        """The /embed answer: each file's exact embedding or its error."""
        uploaded = await self.pipeline.embed(files, "embed")
        _refuse_if_all_failed(uploaded)
        images = [{"id": it.id, "file": it.file, "embedding": [round(float(x), 7) for x in it.embedding],
                   "error": None} if isinstance(it, Embedded) else {**_error_entry(it), "embedding": None}
                  for it in uploaded]
        return {"model": self.model_name, "dim": self.clip.embed_dim, "precision": self.encoders["embed"].precision,
                "images": images, "failed": _failures(uploaded)}

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
        columns = self.tree.label_set.columns
        for rank in RANKS[:-1]:
            if low in columns.lower_codes(rank)[1]:
                return f"{rank}={subset.strip()}"
        if (self._scientific_names() == low).any():
            return f"species={subset.strip()}"
        raise TreeclipError(f"subset {subset!r}: no taxon of that name in the label set")

    async def classifier(self, subset: str | None, labels: Sequence[str] | None):
        """The classifier for a request: the tree, one kept ready, or one built now on the
        label worker (one build at a time; a build whose request was cancelled before it
        started is dropped)."""
        if not labels and not subset:
            return self.tree
        ready = self.classifiers.get(_classifier_key(subset, labels))
        if ready is not None:
            return ready
        if self._label_worker is None:
            raise RuntimeError("ServeEngine.classifier before start()")
        return await asyncio.get_running_loop().run_in_executor(self._label_worker, self.classifier_for,
                                                                subset, labels)

    def classifier_for(self, subset: str | None, labels: Sequence[str] | None):
        """The classifier for custom `labels`, else for `subset`, else the tree; subset and
        label classifiers are kept in a small LRU (built here when missing: slow)."""
        if not labels and not subset:
            return self.tree
        return self.classifiers.get_or_make(_classifier_key(subset, labels), lambda: self._make(subset, labels))

    def _make(self, subset: str | None, labels: Sequence[str] | None):
        from treeclip.predict.classifiers import CustomLabelsClassifier

        if labels:
            # a client's labels never reach the shared label cache: encoded in memory, their
            # embeddings live on in the LRU only
            return CustomLabelsClassifier(self.clip, list(labels), options=self._label_options, caches=self.caches,
                                          label_cache=False)
        return self.tree.restricted(self.subset_spec(subset or ""))

    def classify(self, items: Sequence[Embedded], request: PredictRequest = PredictRequest(), *,
                 classifier: Any = None) -> list[dict]:
        """Per item: `{"id", "file", "predictions": [rows], "rollup": row | None, "error": None}`;
        rows are `treeclip predict`'s JSON Lines rows (`file_name`, ranks or
        `classification`, `score`), the roll-up row adds `rank`. `classifier`: the one
        `classifier_for(request.subset, request.labels)` gives, when the caller has it already."""
        if not items:
            return []
        import torch

        clf = classifier if classifier is not None else (
            self.head if request.head else self.classifier_for(request.subset, request.labels))
        probs = clf.probabilities(torch.from_numpy(np.stack([it.embedding for it in items])))
        top = clf.rows_for(probs, rank=request.rank, k=request.k)
        labelled = request.labels or request.head  # classes, not taxa: no roll-up
        rolled = clf.rows_for(probs, rollup=request.threshold) if request.threshold is not None and not labelled else None
        out = []
        for n, it in enumerate(items):
            out.append({"id": it.id, "file": it.file,
                        "predictions": [{"file_name": it.file, **row} for row in top[n]],
                        "rollup": {"file_name": it.file, **rolled[n][0]} if rolled else None,
                        "error": None})
        return out

    # -- label set search ------------------------------------------------------------
    def _scientific_names(self) -> np.ndarray:
        """Each label taxon's lower-cased `Genus epithet` (built once, from the columns)."""
        if self._search_names is None:
            columns = self.tree.label_set.columns
            genus, epithet = (columns.lower_codes(r) for r in ("genus", "species"))
            genus_names, epithet_names = (sorted(codes, key=codes.get) for _, codes in (genus, epithet))
            self._search_names = np.array([f"{genus_names[g]} {epithet_names[e]}".strip()
                                           for g, e in zip(genus[0], epithet[0])], dtype=object)
        return self._search_names

    def search_taxa(self, q: str, *, limit: int = 20) -> tuple[int, list[dict]]:
        """Taxa whose scientific name, any rank name or common name contains `q`
        (case-insensitive); exact, then prefix, then substring matches, each in label-set
        order. Returns (total, the first `limit`). Names are matched once per distinct name
        (the columns' vocabularies), so a keystroke costs little on 867k taxa."""
        q = " ".join(q.lower().split())
        if not q:
            return 0, []
        columns = self.tree.label_set.columns
        best = np.full(len(columns), 3, dtype=np.int8)  # 3: no match
        for column in (*RANKS, "common"):
            per_taxon, vocabulary = columns.lower_codes(column)
            score = np.fromiter((_match_score(name, q) for name in sorted(vocabulary, key=vocabulary.get)),
                                np.int8, len(vocabulary))
            np.minimum(best, score[per_taxon], out=best)
        scientific = self._scientific_names()
        for i in np.flatnonzero(np.fromiter((q in n for n in scientific), bool, len(scientific))):
            best[i] = min(best[i], _match_score(scientific[i], q))
        found = np.flatnonzero(best < 3)
        ranked = found[np.argsort(best[found], kind="stable")]
        return len(found), [taxon_json(columns.taxon(int(i))) for i in ranked[:limit]]


def _match_score(name: str, q: str) -> int:
    """0 an exact match, 1 a prefix, 2 a substring, 3 none (empty names never match)."""
    if not name or q not in name:
        return 3
    return 0 if name == q else 1 if name.startswith(q) else 2


def taxon_json(t: Taxon) -> dict:
    """A taxon as the API shows it: the seven ranks, `common`, and `name` (scientific)."""
    return {**dict(zip(RANKS, t.lineage)), "common": t.common, "name": t.scientific_name}


def _load(model: str | Path | Any, device: str, caches: CachePaths) -> tuple[str, Any]:
    """(model spec, `ClipModel`): a spec is loaded with fp32 weights on the serving device
    (the text tower and the classifiers made later share them; only the image tower may
    get a bf16 copy, the encoder's)."""
    if isinstance(model, (str, Path)):
        from treeclip.model import load_model

        return str(model), load_model(str(model), device=device, hub_dir=caches.hub)
    return getattr(model, "name", "model"), model


def _public_name(clip: Any) -> str:
    """The model's name in answers: its registered or saved name, never a local path."""
    name = str(getattr(clip, "name", "") or "").replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return name or "model"


def _classifier_key(subset: str | None, labels: Sequence[str] | None) -> tuple:
    if labels:
        return ("labels", *labels)
    return ("subset", " ".join((subset or "").split()).lower())


def _refuse_if_all_failed(results: Sequence[Embedded | Failed]) -> None:
    """A request whose every upload failed is refused, with the status of the first reason."""
    errors = [r for r in results if isinstance(r, Failed)]
    if results and len(errors) == len(results):
        raise UploadError(status_for(errors[0].error), "; ".join(e.error for e in errors))


def _failures(items: Sequence[Embedded | Failed]) -> int:
    return sum(1 for it in items if isinstance(it, Failed))


def _error_entry(failed: Failed) -> dict:
    return {"id": None, "file": failed.file, "predictions": [], "rollup": None, "error": failed.error}


__all__ = ["ServeEngine", "taxon_json"]
