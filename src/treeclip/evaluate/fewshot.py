"""Few-shot classification: SimpleShot CL2N nearest centroid (BIOCLIP-FACTS section 4).

One trial with seed s: `rng = numpy.random.default_rng(s)`; for each class in increasing
class index, its images (in increasing image index) are put in the order
`rng.permutation(n_class)`; the first k are support, the rest query. Classes with no
image left for the query (fewer than k + 1 images) sit out and are counted.

CL2N: features are L2-normalised, the mean of ALL support features (every class
together) is subtracted, and they are L2-normalised again; each class's centroid is the
mean of its transformed support features, and a query goes to the nearest centroid by
Euclidean distance (ties to the lower class index).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from treeclip.runtime.labels import l2_normalise

DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


def split_support_query(labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(support indices, query indices, number of classes skipped for having <= k images)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    support: list[np.ndarray] = []
    query: list[np.ndarray] = []
    skipped = 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) <= k:
            skipped += 1
            continue
        members = members[rng.permutation(len(members))]
        support.append(members[:k])
        query.append(members[k:])
    if not support:
        return np.empty(0, int), np.empty(0, int), skipped
    return np.concatenate(support), np.concatenate(query), skipped


def cl2n_centroids(support: np.ndarray, support_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SimpleShot CL2N fitted on `support`: (centre (1, dim), classes in increasing
    order, their centroids (n_classes, dim)), in float64; see the module docstring."""
    support_labels = np.asarray(support_labels)
    support = l2_normalise(np.asarray(support, np.float64))
    centre = support.mean(axis=0, keepdims=True)
    support = l2_normalise(support - centre)
    classes = np.unique(support_labels)
    centroids = np.stack([support[support_labels == c].mean(axis=0) for c in classes])
    return centre, classes, centroids


def cl2n_predict(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Predicted labels for `query` by SimpleShot CL2N nearest centroid."""
    centre, classes, centroids = cl2n_centroids(support, support_labels)
    query = l2_normalise(l2_normalise(np.asarray(query, np.float64)) - centre)
    # |q - c|^2 = |q|^2 - 2 q.c + |c|^2; |q|^2 is the same for every class of one query.
    dist = (centroids ** 2).sum(axis=1)[None, :] - 2 * query @ centroids.T
    return classes[np.argmin(dist, axis=1)]


def few_shot(features: np.ndarray, labels: np.ndarray, k: int,
             seeds: Iterable[int] = DEFAULT_SEEDS) -> dict:
    """Accuracy over trials: mean, std (population, ddof=0), each trial's accuracy, and
    the number of classes that sat out for having <= k images."""
    labels = np.asarray(labels)
    accs: list[float] = []
    skipped = 0
    for seed in seeds:
        s_idx, q_idx, skipped = split_support_query(labels, k, seed)
        if len(q_idx) == 0:
            accs.append(float("nan"))
            continue
        pred = cl2n_predict(features[s_idx], labels[s_idx], features[q_idx])
        accs.append(float((pred == labels[q_idx]).mean()))
    arr = np.asarray(accs)
    return {
        "k": int(k),
        "mean": float(arr.mean()) if len(arr) else float("nan"),
        "std": float(arr.std()) if len(arr) else float("nan"),
        "trials": accs,
        "classes_skipped": int(skipped),
    }
