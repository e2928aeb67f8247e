"""A classifier head fitted on a few labelled photos (`treeclip fit MODEL LABELLED -o HEAD/`).

LABELLED is a class-per-folder tree (the class is the folder's name; images anywhere
below it) or a CSV/Parquet table with `path` and `label` columns (paths relative to the
table's folder, which they may not escape). The photos are embedded once with the
model (exact fp32, decoded as `predict` decodes them) and kept in the feature cache
(`evaluate.features`), so a refit reads them from there.

Two heads are fitted on the L2-normalised embeddings and the better one, by stratified
k-fold cross-validation (k = min(5, the smallest class's count); every class needs 2+
images), is refitted on every photo and written:

- `centroid`: SimpleShot CL2N (`evaluate.fewshot.cl2n_centroids`), scored by cosine to
  the unit-norm centroids, exactly as `predict --head` scores it;
- `logistic`: logistic regression (`evaluate.linear_probe.fit_logistic`), C chosen from
  `FitOptions.cs` by the same cross-validation (ties: the smaller C).

Ties between the kinds go to `centroid` (no parameters to tune). The head folder's
format is `treeclip.model.heads.FittedHead`; `confusion.png` beside it shows the
cross-validated confusion matrix of the chosen kind.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from treeclip.cache import CachePaths, caches_or_default
from treeclip.data.images import IMAGE_EXTENSIONS
from treeclip.errors import EXIT_OK, EXIT_SOME_FAILED, TreeclipError
from treeclip.evaluate.fewshot import cl2n_centroids
from treeclip.evaluate.linear_probe import DEFAULT_CS, fit_logistic
from treeclip.evaluate.tasks import Task, task_from_rows
from treeclip.log import get_logger
from treeclip.model.heads import FittedHead, fitted_head, is_fitted_head, save_fitted_head
from treeclip.runtime.labels import l2_normalise
from treeclip.runtime.options import InferenceOptions

log = get_logger(__name__)

MAX_FOLDS = 5
MIN_PER_CLASS = 2
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class FitOptions:
    """How heads are fitted: the seed of the fold split, the logistic regression's C
    values to choose from and its iteration cap."""

    seed: int = 0
    cs: tuple[float, ...] = DEFAULT_CS
    max_iter: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "cs", tuple(float(c) for c in self.cs))
        if not self.cs or any(c <= 0 for c in self.cs):
            raise TreeclipError(f"C values {self.cs!r}: expected one or more numbers > 0")
        if self.max_iter < 1:
            raise TreeclipError(f"max iter {self.max_iter!r}: expected a whole number >= 1")


# -- the labelled photos ------------------------------------------------------------
def labelled_task(source: str | Path) -> Task:
    """The photos of LABELLED (a class-per-folder tree, or a table with `path` and
    `label`) as a task of named classes; a bad row is one line in `Task.problems`."""
    from treeclip.evaluate.task_sources import folder_rows

    path = Path(source)
    if path.is_dir():
        rows = [r for r in folder_rows(path, ".", path) if _photo_of_a_class(path, r["path"])]
        loose = [f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:  # said once, not per file: a photo outside any class folder has no label
            log.warning(f"{path}: {len(loose)} images are not in a class folder (e.g. {loose[0].name}); ignored")
        return task_from_rows(path.name or str(path), path, rows, path)
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return task_from_rows(path.stem, path.parent, _table_rows(path), path)
    raise TreeclipError(f"{source}: expected a folder with one subfolder per class, or a CSV with path,label columns")


def _photo_of_a_class(root: Path, rel: str) -> bool:
    """Whether a photo under `root` is a labelled one: not hidden (nor in a hidden folder,
    such as a head being written) and not in a head folder (a head written inside
    LABELLED must not become a class of the next fit)."""
    parts = Path(rel).parts
    return not any(p.startswith(".") for p in parts) and not is_fitted_head(root / parts[0])


def _table_rows(table: Path) -> list[dict[str, str]]:
    """A `path,label` table's rows as task rows (`name` is the label)."""
    from treeclip.data.tables import read_rows

    rows = read_rows(table, what="labelled-photos table")
    missing = [c for c in ("path", "label") if rows and c not in rows[0]]
    if missing:
        raise TreeclipError(f"{table}: no {' or '.join(missing)} column (expected path,label)")
    return [{"path": r["path"], "name": r["label"], "_where": f"{table}:{i}"} for i, r in enumerate(rows, start=2)]


def check_counts(labels: np.ndarray, classes: Sequence[str]) -> int:
    """The number of folds (min(5, smallest class)); one line when fitting cannot work."""
    counts = np.bincount(labels, minlength=len(classes))
    if len(classes) < 2:
        raise TreeclipError(f"a head needs at least 2 classes, found {len(classes)}")
    few = [f"{c} ({n})" for c, n in zip(classes, counts) if n < MIN_PER_CLASS]
    if few:
        raise TreeclipError(f"every class needs at least {MIN_PER_CLASS} readable images; too few: {', '.join(few)}")
    return int(min(MAX_FOLDS, counts.min()))


# -- fitting ------------------------------------------------------------------------
def centroid_head(x: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> FittedHead:
    """The CL2N nearest-centroid head of features `x` with labels `y` (0..n-1, all present)."""
    centre, _, centroids = cl2n_centroids(x, y)
    return fitted_head("centroid", centroids, None, centre.reshape(-1), list(classes))


def logistic_head(x: np.ndarray, y: np.ndarray, classes: Sequence[str], c: float, max_iter: int) -> FittedHead:
    """The logistic-regression head of features `x` (L2-normalised here) with labels `y`."""
    clf = fit_logistic(l2_normalise(np.asarray(x, np.float64)), y, c, max_iter)
    weight, bias = clf.coef_, clf.intercept_
    if weight.shape[0] == 1:  # two classes: sklearn keeps one row; softmax([-z/2, z/2]) = sigmoid(z)
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    return fitted_head("logistic", weight, bias, None, list(classes))


@dataclass
class CrossValidation:
    """Out-of-fold predictions of each kind (logistic: at its best C) and accuracies."""

    folds: int
    predictions: dict[str, np.ndarray]
    accuracy: dict[str, float]
    best_c: float
    accuracy_by_c: dict[str, float]


def cross_validate(x: np.ndarray, y: np.ndarray, classes: Sequence[str], folds: int,
                   options: FitOptions) -> CrossValidation:
    """Stratified `folds`-fold predictions of both kinds of head."""
    from sklearn.model_selection import StratifiedKFold

    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=options.seed)
    centroid = np.zeros(len(y), np.int64)
    logistic = {c: np.zeros(len(y), np.int64) for c in options.cs}
    for train, test in split.split(x, y):
        centroid[test] = centroid_head(x[train], y[train], classes).predict(x[test])
        for c in options.cs:
            logistic[c][test] = logistic_head(x[train], y[train], classes, c, options.max_iter).predict(x[test])
    by_c = {c: float((p == y).mean()) for c, p in logistic.items()}
    best_c = max(options.cs, key=lambda c: (by_c[c], -c))  # ties: the smaller C, the more regularised
    predictions = {"centroid": centroid, "logistic": logistic[best_c]}
    return CrossValidation(folds, predictions, {k: float((p == y).mean()) for k, p in predictions.items()},
                           best_c, {str(c): a for c, a in by_c.items()})


@dataclass
class FitResult:
    """A fitted head, the cross-validation that chose it, and its per-class numbers."""

    head: FittedHead
    cv: CrossValidation
    counts: list[int]
    precision: list[float]
    recall: list[float]
    confusion: np.ndarray
    skipped: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.head.kind

    def per_class(self) -> list[dict]:
        return [{"class": c, "images": n, "precision": p, "recall": r}
                for c, n, p, r in zip(self.head.classes, self.counts, self.precision, self.recall)]


def fit_head(features: np.ndarray, labels: np.ndarray, classes: Sequence[str],
             options: FitOptions = FitOptions()) -> FitResult:
    """Cross-validate both kinds on (features, labels into `classes`), refit the better
    one on everything; see the module docstring."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    x, y = np.asarray(features, np.float32), np.asarray(labels, np.int64)
    cv = cross_validate(x, y, classes, check_counts(y, classes), options)
    kind = "logistic" if cv.accuracy["logistic"] > cv.accuracy["centroid"] else "centroid"
    head = (logistic_head(x, y, classes, cv.best_c, options.max_iter) if kind == "logistic"
            else centroid_head(x, y, classes))
    every = np.arange(len(classes))
    precision, recall, _, _ = precision_recall_fscore_support(y, cv.predictions[kind], labels=every, zero_division=0)
    return FitResult(head, cv, np.bincount(y, minlength=len(classes)).tolist(), precision.tolist(), recall.tolist(),
                     confusion_matrix(y, cv.predictions[kind], labels=every))


# -- reporting ----------------------------------------------------------------------
def report_text(result: FitResult) -> str:
    """The cross-validation, per-class precision and recall, and the confusion matrix, as text."""
    cv = result.cv
    lines = [f"{cv.folds}-fold cross-validation: centroid (CL2N) {cv.accuracy['centroid']:.3f}, "
             f"logistic (C={cv.best_c:g}) {cv.accuracy['logistic']:.3f} -> {result.kind}", ""]
    width = max(len("class"), *(len(c) for c in result.head.classes))
    lines.append(f"{'class':<{width}}  images  precision  recall")
    for row in result.per_class():
        lines.append(f"{row['class']:<{width}}  {row['images']:>6}  {row['precision']:>9.3f}  {row['recall']:>6.3f}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted, in the order above):"]
    cell = max(3, len(str(int(result.confusion.max(initial=0)))))
    for name, row in zip(result.head.classes, result.confusion):
        lines.append(f"{name:<{width}}  " + " ".join(f"{int(v):>{cell}}" for v in row))
    return "\n".join(lines)


def confusion_png(result: FitResult) -> bytes:
    """The cross-validated confusion matrix of the chosen kind as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; the PNG is written with the head
    import matplotlib.pyplot as plt

    n = len(result.head.classes)
    size = min(20.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ax.imshow(result.confusion, cmap="Blues")
        ax.set_xticks(range(n), result.head.classes, rotation=90)
        ax.set_yticks(range(n), result.head.classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{result.kind}: {result.cv.folds}-fold CV accuracy {result.cv.accuracy[result.kind]:.3f}")
        if n <= 30:  # counts stay readable up to about this many classes
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, str(int(result.confusion[i, j])), ha="center", va="center", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()
    finally:
        plt.close(fig)


def head_card(result: FitResult, *, model, model_spec: str, source: str, options: InferenceOptions,
              fit: FitOptions, n_skipped: int) -> dict:
    """What `head.json` says besides the head's own arrays (see `model.heads.FittedHead`)."""
    from treeclip import __version__

    cv = result.cv
    return {
        "model": {"fingerprint": model.fingerprint(), "spec": model_spec, "name": model.name,
                  "embed_dim": model.embed_dim},
        "counts": dict(zip(result.head.classes, result.counts)),
        "cv": {"folds": cv.folds, "accuracy": cv.accuracy, "logistic_C": cv.best_c,
               "logistic_accuracy_by_C": cv.accuracy_by_c},
        "per_class": result.per_class(),
        "confusion": result.confusion.tolist(),
        "fit": {"source": source, "images": int(sum(result.counts)), "skipped": n_skipped, **asdict(fit),
                "precision": options.precision, "resize": options.resize},
        "treeclip_version": __version__,
    }


# -- the verb -----------------------------------------------------------------------
@dataclass
class FitRun:
    """What `run_fit` did: the result, where the head went, how many inputs were skipped."""

    result: FitResult
    out_dir: Path
    skipped: int

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.skipped else EXIT_OK


def run_fit(model_spec: str, labelled: str | Path, out_dir: str | Path, *, options: InferenceOptions | None = None,
            fit: FitOptions = FitOptions(), caches: CachePaths | None = None, progress: bool = True) -> FitRun:
    """Embed the labelled photos (cached), fit and choose a head, write it to `out_dir`;
    unreadable photos are one warning line each, skipped and counted."""
    from treeclip.evaluate.features import image_features
    from treeclip.model import load_model

    caches = caches_or_default(caches)
    task = labelled_task(labelled)
    options = options or InferenceOptions.for_verb("eval", workers=0)
    model = load_model(model_spec, device=_device(options), hub_dir=caches.hub)
    feats = image_features(model, task, options=options, caches=caches, progress=progress, exact=True)
    problems = task.problems + feats.errors
    for line in problems:
        log.warning(line)
    ok = feats.ok
    classes = [c.name for c in task.classes]
    result = fit_head(feats.features[ok], task.labels[ok], classes, fit)
    card = head_card(result, model=model, model_spec=model_spec, source=str(labelled), options=options, fit=fit,
                     n_skipped=len(problems))
    head = fitted_head(result.kind, result.head.weight, result.head.bias, result.head.centre, classes, card)
    out = save_fitted_head(out_dir, head, {"confusion.png": confusion_png(result)})
    log.info(f"fit: {int(ok.sum())} images of {len(classes)} classes, {len(problems)} skipped"
             f"{' (cached embeddings)' if feats.cached else ''}; {result.kind} head -> {out}")
    return FitRun(result, out, len(problems))


def _device(options: InferenceOptions) -> str:
    from treeclip.runtime.precision import resolve_device

    return str(resolve_device(options.device))
