"""The three classifiers of the Python API and the CLI.

    from treeclip.predict import TreeOfLifeClassifier
    clf = TreeOfLifeClassifier("runs/demo/model", subset="class=Insecta")
    rows = clf.predict(["a.jpg", "photos/"], rank="family", k=3)

Every classifier embeds its labels once (cached on disk), encodes images in batches
(decoding in worker processes, or in the main process on 2 cores: `InferenceOptions.workers`)
and turns `exp(logit_scale) * image @ label` into a softmax.
Rows are dicts with pybioclip's keys: `file_name`, the ranks or `classification`, `score`;
an unreadable input gives one row with `error` set and the run goes on.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from treeclip.cache import CachePaths, caches_or_default
from treeclip.errors import TreeclipError
from treeclip.predict import aggregate as agg
from treeclip.predict.inputs import as_items
from treeclip.predict.labels import DEFAULT_TEXT_TYPE, load_label_source, subset_mask, taxon_texts
from treeclip.runtime.encoder import ImageEncoder
from treeclip.runtime.images import DRAFT_MARGIN, Item, iter_batches
from treeclip.runtime.labels import label_embeddings
from treeclip.runtime.labelsets import LabelMatrix, LabelSet, dense_rows
from treeclip.runtime.options import InferenceOptions
from treeclip.runtime.taxa_columns import TaxaColumns
from treeclip.taxonomy.taxon import RANKS, Taxon, rank_index

DENSE_BYTES = 256 << 20
"""Precomputed label embeddings up to this size are copied into memory (as a tensor on the
classifier's device); larger ones are scored block by block from the memory-mapped file."""


def _load_clip(model: Any, caches: CachePaths | None = None):
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from treeclip.model import load_model

        return load_model(str(model), hub_dir=caches_or_default(caches).hub)
    if not hasattr(model, "encode_texts"):
        raise TypeError("model must be a model spec (name, dir, checkpoint) or a treeclip ClipModel")
    return model


class BaseClassifier:
    """Shared machinery: model, image encoder, label embeddings, batched probabilities."""

    def __init__(self, model: Any, *, options: InferenceOptions | None = None, caches: CachePaths | None = None,
                 label_cache: bool = True, progress: bool = False) -> None:
        """`model`: a spec (`load_model`) or a `ClipModel`; `options`: device, precision,
        batching, templates, resize (default `InferenceOptions()`); `caches`: where label
        embeddings and exported graphs are kept (default: the environment's).
        `label_cache=False`: label embeddings are computed in memory and never read from
        or written to the on-disk cache (labels a web client sent)."""
        self.options = options = options or InferenceOptions()
        self.caches = caches = caches_or_default(caches)
        self.clip = _load_clip(model, caches)
        self.preprocess = self.clip.preprocess_for(options.resize)
        self.encoder = ImageEncoder(self.clip, device=options.device, precision=options.precision,
                                    compile=options.compile, caches=caches, backend=options.backend)
        self.templates = options.template_texts()
        self.progress, self.label_cache = progress, label_cache
        self.logit_scale = self.clip.logit_scale()
        self._labels: torch.Tensor | None = None

    @property
    def precision(self) -> str:
        return self.encoder.precision

    def _set_labels(self, texts: Sequence[str]) -> None:
        emb = label_embeddings(self.clip, texts, self.templates, caches=self.caches, persist=self.label_cache,
                               progress=self.progress)
        self._labels = torch.from_numpy(emb).to(self.encoder.device)

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        """(n, dim) L2-normalised image embeddings -> (n, n_labels) softmax probabilities."""
        logits = self.logit_scale * features.to(self._labels.device) @ self._labels.T
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def encoded_batches(self, images: Any) -> Iterator[tuple[list[Item], np.ndarray | None, list[int], dict[int, str]]]:
        """Per batch: the items, the probabilities of the decoded ones, their positions
        in the batch, and {position: error line} for the others."""
        items = images if isinstance(images, list) and all(isinstance(i, Item) for i in images) else as_items(images)
        # the exact fp32 path sees open_clip's own pixels: no JPEG draft decode
        for idx, ok, pixels, errors in iter_batches(items, self.preprocess, batch_size=self.options.batch_size,
                                                    workers=self.options.workers, draft_size=self.clip.image_size,
                                                    draft_margin=DRAFT_MARGIN,
                                                    exact=self.encoder.precision == "fp32"):
            batch = [items[i] for i in idx]
            first = idx[0] if idx else 0
            probs = self.probabilities(self.encoder(pixels)) if pixels is not None else None
            yield batch, probs, [i - first for i in ok], {i - first: e for i, e in errors.items()}

    def predict_batches(self, images: Any, **options: Any) -> Iterator[list[dict]]:
        """Rows per batch, in input order (see `predict`); for streaming writers."""
        for batch, probs, ok, errors in self.encoded_batches(images):
            rows: list[dict] = []
            good = {pos: j for j, pos in enumerate(ok)}
            scored = self.rows_for(probs, **options) if probs is not None else []
            for pos, item in enumerate(batch):
                if pos in errors:
                    rows.append({"file_name": item.name, "error": errors[pos]})
                else:
                    rows.extend({"file_name": item.name, **r} for r in scored[good[pos]])
            yield rows

    def predict(self, images: Any, **options: Any) -> list[dict]:
        """Rows for every image: `images` is a path, folder, glob, bytes, PIL image or a
        list of them."""
        return [row for rows in self.predict_batches(images, **options) for row in rows]

    def rows_for(self, probs: np.ndarray, **options: Any) -> list[list[dict]]:  # pragma: no cover
        raise NotImplementedError


def _keep(scores: np.ndarray, idx: np.ndarray, vals: np.ndarray, min_prob: float) -> list[tuple[int, float]]:
    # rows below min_prob are dropped, but every image keeps its best answer
    out = [(int(i), float(v)) for i, v in zip(idx, vals) if v >= min_prob]
    return out or [(int(idx[0]), float(vals[0]))]


class TreeOfLifeClassifier(BaseClassifier):
    """Classify over a label set of taxa at any rank: softmax over all (or a subset of the)
    taxa, higher ranks = sums of the species probabilities (a vectorised segment sum).

    `taxa`: a list of `Taxon`, a `LabelSet`, or a spec `load_label_source` reads (a
    CSV/Parquet file, a dir with `taxa.parquet`, `ncbi:CLADE`, a `txt_emb_species` label
    set: its file, its folder or `hf-hub:ORG/NAME` of a dataset repo); default the model's
    own (its dir's label set or `taxa.parquet`, or the set published for a published
    model). `subset`: one spec or a list of specs all of which a taxon must pass
    (`class=Insecta`, a species-list file; see `labels.subset_mask`). `text_type`: which
    name of each taxon fills the templates (BioCLIP: `taxon_com`, the 7 ranks plus the
    common name); precomputed label sets come with their own."""

    def __init__(self, model: Any, taxa: Sequence[Taxon] | LabelSet | str | None = None, *,
                 subset: str | Sequence[str] | None = None, text_type: str = DEFAULT_TEXT_TYPE,
                 ncbi_limit: int | None = None, options: InferenceOptions | None = None,
                 caches: CachePaths | None = None, label_cache: bool = True, progress: bool = False) -> None:
        super().__init__(model, options=options, caches=caches, label_cache=label_cache, progress=progress)
        self.text_type = text_type
        if isinstance(taxa, LabelSet):
            labels = taxa
        elif taxa is None or isinstance(taxa, str):
            spec = model if isinstance(model, str) else getattr(self.clip, "name", None)
            labels = load_label_source(taxa, spec, limit=ncbi_limit, templates=self.templates, text_type=text_type,
                                       caches=self.caches, progress=self.progress)
        else:
            labels = LabelSet.of_taxa(taxa)
        self.label_set = labels = self._encoded(labels)
        self._use(labels, self._subset_take(subset))

    def restricted(self, subset: str | Sequence[str]) -> "TreeOfLifeClassifier":
        """This classifier over the taxa of its label set that `subset` keeps: the model,
        the image encoder and the label embeddings are shared, nothing is encoded again."""
        clone = copy.copy(self)
        clone._use(self.label_set, self._subset_take(subset))
        return clone

    def _subset_take(self, subset: str | Sequence[str] | None) -> np.ndarray:
        """The label-set columns every spec of `subset` keeps (all without one)."""
        specs = [subset] if isinstance(subset, str) else list(subset or [])
        keep = np.ones(len(self.label_set), dtype=bool)
        for spec in specs:
            keep &= subset_mask(self.label_set.columns, spec)
        if not keep.any():
            raise TreeclipError(f"the subsets {', '.join(specs)} together match no taxa")
        return np.flatnonzero(keep)

    def _encoded(self, labels: LabelSet) -> LabelSet:
        """`labels` with label embeddings: as given when precomputed, else the distinct
        taxa in lineage order, encoded once (cached; subsets reuse the full set's entry)."""
        if labels.embeddings is not None:
            if labels.embeddings.shape[0] != self.clip.embed_dim:
                raise TreeclipError(f"{labels.source}: its label embeddings are {labels.embeddings.shape[0]}-d, "
                                    f"but {self.clip.name} makes {self.clip.embed_dim}-d embeddings; "
                                    "the label set belongs to another model")
            return labels
        taxa = list(dict.fromkeys(labels.taxa if labels.taxa is not None else labels.columns.to_taxa()))
        taxa = [taxa[i] for i in agg.sort_taxa(taxa)]
        emb = label_embeddings(self.clip, taxon_texts(taxa, self.text_type), self.templates,
                               caches=self.caches, persist=self.label_cache, progress=self.progress)
        return LabelSet(TaxaColumns.from_taxa(taxa), emb.T, labels.source, taxa)

    def _use(self, labels: LabelSet, take: np.ndarray) -> None:
        """Classify among the taxa `take` (increasing label-set columns): their embeddings
        in memory when small or already there, else scored from the file."""
        emb = labels.embeddings
        self.columns = labels.columns.take(take)
        self.index = agg.RankIndex(self.columns, any_order=True, order=labels.columns.order_of(take))
        self._matrix, self._take = None, None
        self._taxa = [labels.taxa[i] for i in take] if labels.taxa is not None else None
        if isinstance(emb, np.memmap) and len(take) * emb.shape[0] * 4 > DENSE_BYTES:
            self._matrix, self._take = LabelMatrix(emb), take
            return
        dense = dense_rows(emb, take) if isinstance(emb, np.memmap) else np.ascontiguousarray(emb.T[take], np.float32)
        self._labels = torch.from_numpy(dense).to(self.encoder.device)

    @property
    def taxa(self) -> list[Taxon]:
        """The label taxa (after subsets) as `Taxon` objects, in label-set order (lineage
        order for encoded tables); built on first use (slow for huge sets: see `columns`)."""
        if self._taxa is None:
            self._taxa = self.columns.to_taxa()
        return self._taxa

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        """(n, dim) L2-normalised image embeddings -> (n, n_taxa) softmax probabilities,
        columns in the order of `columns`."""
        if self._matrix is None:
            return super().probabilities(features)
        return self._matrix.probabilities(features.float().cpu().numpy(), self.logit_scale, self._take)

    def rows_for(self, probs: np.ndarray, rank: str = "species", k: int = 5, min_prob: float = 0.0,
                 rollup: float | None = None) -> list[list[dict]]:
        """Top-k groups at `rank` per image, or with `rollup` (a threshold in (0, 1]) the
        deepest confident rank (or "unknown") per image."""
        if rollup is not None:
            return [[rollup_row(a)] for a in agg.roll_up(probs, self.index, rollup)]
        rank_index(rank)
        groups = self.index.groups(rank)
        summed = self.index.aggregate(probs, rank)
        idx, vals = agg.top_k(summed, k)
        return [[{**taxon_columns(groups.taxa[g], rank), "score": s} for g, s in _keep(summed[n], idx[n], vals[n], min_prob)]
                for n in range(len(probs))]

    def predict(self, images: Any, rank: str = "species", k: int = 5, min_prob: float = 0.0,
                rollup: float | None = None) -> list[dict]:
        """Rows per image: `file_name`, `kingdom`..`rank` (at species also `species_epithet`,
        `species` as `Genus epithet` and `common_name`), `score`; best first."""
        return super().predict(images, rank=rank, k=k, min_prob=min_prob, rollup=rollup)


def taxon_columns(taxon: Taxon, rank: str) -> dict[str, str]:
    """pybioclip's columns for a taxon at `rank`."""
    depth = rank_index(rank) + 1
    cols = {r: taxon[r] for r in RANKS[:min(depth, 6)]}
    if depth == len(RANKS):
        cols["species_epithet"] = taxon.species
        cols["species"] = f"{taxon.genus} {taxon.species}".strip() if taxon.species else ""
        cols["common_name"] = taxon.common
    return cols


def rollup_row(answer: agg.RollUp) -> dict:
    """A roll-up answer as a row: `rank` (or "unknown"), the ranks down to it, `score`."""
    row: dict[str, Any] = {"rank": answer.rank}
    if answer.taxon is not None:
        row.update(taxon_columns(answer.taxon, answer.rank))
    row["score"] = answer.score
    return row


class CustomLabelsClassifier(BaseClassifier):
    """Classify among the user's own labels (`--cls`): rows `file_name`,
    `classification`, `score`."""

    def __init__(self, model: Any, labels: Sequence[str], *, options: InferenceOptions | None = None,
                 caches: CachePaths | None = None, label_cache: bool = True, progress: bool = False) -> None:
        super().__init__(model, options=options, caches=caches, label_cache=label_cache, progress=progress)
        self.labels = list(dict.fromkeys(str(c).strip() for c in labels if str(c).strip()))
        if not self.labels:
            raise TreeclipError("no custom labels given")
        self._set_labels(self.labels)

    def _scores(self, probs: np.ndarray) -> tuple[np.ndarray, list[str]]:
        return probs, self.labels

    def rows_for(self, probs: np.ndarray, k: int = 5, min_prob: float = 0.0, **_: Any) -> list[list[dict]]:
        scores, names = self._scores(probs)
        return label_rows(scores, names, k, min_prob)

    def predict(self, images: Any, k: int = 5, min_prob: float = 0.0, **_: Any) -> list[dict]:
        """Rows per image: `file_name`, `classification`, `score`; best first."""
        return super().predict(images, k=k, min_prob=min_prob)


class BinningClassifier(CustomLabelsClassifier):
    """Custom labels whose probabilities are summed into bins (`--bins`): `cls_to_bin`
    maps each label to its bin; rows name the bin in `classification`."""

    def __init__(self, model: Any, cls_to_bin: Mapping[str, str], *, options: InferenceOptions | None = None,
                 caches: CachePaths | None = None, label_cache: bool = True, progress: bool = False) -> None:
        labels = [str(c).strip() for c in cls_to_bin]
        super().__init__(model, labels, options=options, caches=caches, label_cache=label_cache, progress=progress)
        bins = {str(c).strip(): str(b).strip() for c, b in cls_to_bin.items()}
        self.bins = list(dict.fromkeys(bins[c] for c in self.labels))
        position = {b: i for i, b in enumerate(self.bins)}
        self._codes = np.array([position[bins[c]] for c in self.labels], dtype=np.int64)

    def _scores(self, probs: np.ndarray) -> tuple[np.ndarray, list[str]]:
        return agg.group_sum(probs, self._codes, len(self.bins)), self.bins


def label_rows(scores: np.ndarray, names: Sequence[str], k: int, min_prob: float) -> list[list[dict]]:
    """Per image, the top-k `classification`/`score` rows of (n, n_names) `scores`."""
    idx, vals = agg.top_k(scores, k)
    return [[{"classification": names[i], "score": s} for i, s in _keep(scores[n], idx[n], vals[n], min_prob)]
            for n in range(len(scores))]


class HeadClassifier(BaseClassifier):
    """Classify among the classes of a head fitted on labelled photos (`treeclip fit`,
    `--head`): rows `file_name`, `classification`, `score`, as with custom labels.

        clf = HeadClassifier("runs/demo/model", "my-head/")
        rows = clf.predict("photos/", k=3)

    Probabilities are the softmax of the head's logits (a centroid head's cosines times
    the model's logit scale; see `treeclip.model.heads.FittedHead`). A head fitted on
    another model's embeddings is refused: the model's fingerprint must be the one the
    head's card records."""

    def __init__(self, model: Any, head: str | Any, *, options: InferenceOptions | None = None,
                 caches: CachePaths | None = None, progress: bool = False, **_: Any) -> None:
        """`head`: a head folder or a `FittedHead`; the rest as `BaseClassifier`."""
        from treeclip.model.heads import read_fitted_head

        super().__init__(model, options=options, caches=caches, progress=progress)
        self.head = read_fitted_head(head) if isinstance(head, (str, os.PathLike)) else head
        self.labels = self.head.classes
        _check_head_model(self.head, self.clip, head)

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        """(n, dim) L2-normalised image embeddings -> (n, n_classes) softmax probabilities."""
        return self.head.probabilities(features.float().cpu().numpy(), self.logit_scale)

    def rows_for(self, probs: np.ndarray, k: int = 5, min_prob: float = 0.0, **_: Any) -> list[list[dict]]:
        return label_rows(probs, self.labels, k, min_prob)

    def predict(self, images: Any, k: int = 5, min_prob: float = 0.0, **_: Any) -> list[dict]:
        """Rows per image: `file_name`, `classification`, `score`; best first."""
        return super().predict(images, k=k, min_prob=min_prob)


def _check_head_model(head: Any, clip: Any, where: Any) -> None:
    """One line when `head` was fitted on another model than `clip`."""
    head.check_model(clip.fingerprint(), clip.name, where)
    if head.weight.shape[1] != clip.embed_dim:
        raise TreeclipError(f"{where}: the head takes {head.weight.shape[1]}-d embeddings, "
                            f"{clip.name} makes {clip.embed_dim}-d ones")
