"""Zero-shot classification as the BioCLIP paper evaluates it (BIOCLIP-FACTS section 4).

A class embedding is the mean of the L2-normalised text embeddings of the class name put
through every template, renormalised. Logits are `exp(logit_scale) * image @ class`;
argmax order is unaffected by the scale, so accuracies do not depend on it.

Ties are broken towards the lower class index everywhere (a stable sort), so the top-1
prediction is `argmax` and top-k is the first k of a stable descending sort.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from treeclip.runtime.labels import class_embeddings, l2_normalise  # noqa: F401 (the API)
from treeclip.taxonomy.taxon import RANKS, TEXT_TYPES, Taxon

AS_GIVEN = "as-given"
"""Text type meaning: use the class names exactly as the task gives them."""

CLASS_TEXT_TYPES: tuple[str, ...] = TEXT_TYPES + (AS_GIVEN,)
DEFAULT_TEXT_TYPE = "taxon_com"


def class_text(taxon: Taxon | None, given: str, text_type: str) -> str:
    """The name that fills the templates for one class: `taxon.name(text_type)` for a
    class with a taxonomy, else (or for `as-given`) the name the task gave."""
    if text_type not in CLASS_TEXT_TYPES:
        raise ValueError(f"unknown text type {text_type!r}; expected one of {', '.join(CLASS_TEXT_TYPES)}")
    if text_type == AS_GIVEN or taxon is None or taxon.is_empty:
        return given
    return taxon.name(text_type)


def logits(image_features: np.ndarray, class_emb: np.ndarray, logit_scale: float = 1.0) -> np.ndarray:
    """`logit_scale * image @ class.T`; pass `exp` of a log-scale yourself
    (`ClipModel.logit_scale()` returns the exponentiated scale)."""
    return logit_scale * (np.asarray(image_features, np.float32) @ np.asarray(class_emb, np.float32).T)


def ranked_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """(n, k) class indices, best first, ties to the lower index."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k best classes (k capped at n_classes)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    top = ranked_classes(scores, min(k, scores.shape[1]))
    return float((top == labels[:, None]).any(axis=1).mean())


def mean_per_class_recall(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in `labels` of the fraction of their images predicted right."""
    labels = np.asarray(labels)
    pred = np.asarray(pred)
    recalls = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return float(np.mean(recalls)) if recalls else float("nan")


def rank_accuracy(pred: np.ndarray, labels: np.ndarray, class_taxa: Sequence[Taxon | None]) -> dict[str, float]:
    """Top-1 accuracy at each rank above the class: the predicted class counts as right at
    a rank when its lineage down to that rank equals the true class's. Ranks where some
    class has no name are left out."""
    out: dict[str, float] = {}
    if not len(labels) or any(t is None for t in class_taxa):
        return out
    for r, rank in enumerate(RANKS):
        if any(not t.lineage[r] for t in class_taxa):
            continue
        codes = {}
        ids = np.array([codes.setdefault(t.lineage[: r + 1], len(codes)) for t in class_taxa])
        out[rank] = float((ids[np.asarray(pred)] == ids[np.asarray(labels)]).mean())
    return out


def zero_shot_metrics(image_features: np.ndarray, labels: np.ndarray, class_emb: np.ndarray,
                      logit_scale: float = 1.0, class_taxa: Sequence[Taxon | None] | None = None) -> dict:
    """Top-1, top-3, top-5 accuracy and mean per-class recall over the given images; with
    `class_taxa`, also top-1 accuracy at every rank (`rank_top1`)."""
    scores = logits(image_features, class_emb, logit_scale)
    pred = ranked_classes(scores, 1)[:, 0]
    metrics = {
        "top1": topk_accuracy(scores, labels, 1),
        "top3": topk_accuracy(scores, labels, 3),
        "top5": topk_accuracy(scores, labels, 5),
        "per_class_recall": mean_per_class_recall(pred, labels),
        "n": int(len(labels)),
    }
    if class_taxa is not None:
        metrics["rank_top1"] = rank_accuracy(pred, labels, class_taxa)
    return metrics
