"""Linear probe: logistic regression on frozen image features, on the CPU.

Split (seeded, per class, like the few-shot trials): a class's images are permuted with
`numpy.random.default_rng(seed)`; `test_fraction` of them (at least one) are test,
`val_fraction` (at least one when 3+ images) validation, the rest training. A task whose
catalog has a `split` column with `train` and `test` rows uses those instead, and carves
the validation rows out of `train` the same way.

The regularisation strength C is chosen on the validation split from a small sweep;
the probe is then refitted on train + validation and scored on test.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from treeclip.runtime.labels import l2_normalise

DEFAULT_CS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)


def probe_split(labels: np.ndarray, *, seed: int = 0, val_fraction: float = 0.2,
                test_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Indices of `train`, `val`, `test` per the module docstring."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_test = max(1, int(round(n * test_fraction))) if n >= 2 else 0
        n_val = max(1, int(round(n * val_fraction))) if n >= 3 else 0
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test:n_test + n_val])
        parts["train"].append(members[n_test + n_val:])
    return {k: np.sort(np.concatenate(v)) if v else np.empty(0, int) for k, v in parts.items()}


def split_from_column(splits: Sequence[str], labels: np.ndarray, *, seed: int = 0,
                      val_fraction: float = 0.2) -> dict[str, np.ndarray] | None:
    """Use a catalog's own `train`/`test` rows (`val`/`valid`/`validation` rows join the
    validation split; otherwise it is carved out of `train`). None when the column
    does not name both train and test rows."""
    s = np.asarray([str(v).strip().lower() for v in splits])
    train, test = np.flatnonzero(s == "train"), np.flatnonzero(np.isin(s, ["test"]))
    val = np.flatnonzero(np.isin(s, ["val", "valid", "validation"]))
    if len(train) == 0 or len(test) == 0:
        return None
    if len(val) == 0:
        inner = probe_split(np.asarray(labels)[train], seed=seed, val_fraction=val_fraction, test_fraction=0.0)
        # test_fraction 0 still holds one image out of classes with 2+ images; fold it back.
        val = train[inner["val"]]
        train = np.setdiff1d(train, val)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, max_iter: int = 1000):
    """A fitted `sklearn.linear_model.LogisticRegression(C=c)` on features `x` (as given)."""
    from sklearn.linear_model import LogisticRegression

    from threadpoolctl import threadpool_limits

    clf = LogisticRegression(C=c, max_iter=max_iter)
    # Probes on a few thousand features gain nothing from BLAS threads and lose much
    # to oversubscription when other work shares the cores.
    with warnings.catch_warnings(), threadpool_limits(1 if x.size < 5_000_000 else None):
        # A probe that stops at max_iter is still a fair probe; the warning is noise.
        warnings.simplefilter("ignore")
        clf.fit(x, y)
    return clf


def linear_probe(features: np.ndarray, labels: np.ndarray, *, split: dict[str, np.ndarray] | None = None,
                 cs: Sequence[float] = DEFAULT_CS, seed: int = 0, max_iter: int = 1000) -> dict:
    """Test accuracy of a logistic-regression probe whose C is picked on validation.
    Features are L2-normalised first (as every CLIP embedding is compared)."""
    x = l2_normalise(np.asarray(features, np.float64))
    y = np.asarray(labels)
    split = split if split is not None else probe_split(y, seed=seed)
    tr, va, te = split["train"], split["val"], split["test"]
    if len(te) == 0 or len(np.unique(y[tr])) < 2:
        return {"accuracy": float("nan"), "C": None, "val_accuracy": {}, "n_train": int(len(tr)),
                "n_val": int(len(va)), "n_test": int(len(te))}
    val_acc: dict[str, float] = {}
    best_c = cs[0]
    if len(va):
        best = -1.0
        for c in cs:
            acc = float((fit_logistic(x[tr], y[tr], c, max_iter).predict(x[va]) == y[va]).mean())
            val_acc[str(c)] = acc
            if acc > best:  # strict: the smallest C wins ties (the more regularised probe)
                best, best_c = acc, c
    fit_idx = np.concatenate([tr, va])
    clf = fit_logistic(x[fit_idx], y[fit_idx], best_c, max_iter)
    acc = float((clf.predict(x[te]) == y[te]).mean())
    return {"accuracy": acc, "C": float(best_c), "val_accuracy": val_acc,
            "n_train": int(len(tr)), "n_val": int(len(va)), "n_test": int(len(te))}
