"""Classifier heads in a model dir: the species head of a model trained with a
classification objective (`treeclip train --objective ce|hier-ce`, the paper's objective
ablation), beside the open_clip files.

    classifier.safetensors   `{rank}.weight` (n_classes_at_rank, embed_dim), `logit_scale` (one per rank)
    classifier.json          objective, ranks, and the species classes (7-rank lineage and
                             common name, in the order of the species head's rows)

A head scores the L2-normalised image embedding against its L2-normalised rows (a cosine
classifier), so it applies to the normalised features every stage caches. The open_clip
files stay plain: `open_clip.create_model_and_transforms('local-dir:DIR')` still loads the
model (its text tower is the untrained initialisation; only the image tower learned).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from treeclip import fsutil
from treeclip.errors import TreeclipError
from treeclip.taxonomy.taxon import Taxon

HEADS_FILE = "classifier.safetensors"
HEADS_META = "classifier.json"


@dataclass(frozen=True)
class SpeciesHead:
    """The species head of a classifier model: unit-norm rows, one per class."""

    objective: str
    weights: np.ndarray          # (n_classes, embed_dim), rows L2-normalised
    classes: list[Taxon]


def save_heads(out_dir: str | Path, state: dict, *, objective: str, ranks: tuple[str, ...],
               classes: list[Taxon]) -> None:
    """Write the heads' tensors (`{rank}.weight`, `logit_scale`) and their description."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with fsutil.atomic_path(out / HEADS_FILE, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    fsutil.write_json_atomic(out / HEADS_META, {
        "objective": objective, "ranks": list(ranks),
        "classes": [{"lineage": list(t.lineage), "common": t.common} for t in classes]})


def has_heads(model_dir: str | Path) -> bool:
    """Whether `model_dir` holds classifier heads (a model trained with a classification objective)."""
    return (Path(model_dir) / HEADS_META).is_file()


def read_species_head(model_dir: str | Path) -> SpeciesHead:
    """The species head of a classifier model dir; a one-line error if it is unusable."""
    from safetensors.numpy import load_file

    path = Path(model_dir)
    try:
        meta = json.loads((path / HEADS_META).read_text(encoding="utf-8"))
        weights = load_file(str(path / HEADS_FILE))["species.weight"].astype(np.float32)
        classes = [Taxon(tuple(c["lineage"]), c.get("common", "")) for c in meta["classes"]]
    except Exception as err:  # safetensors raises its own error type for a damaged file
        raise TreeclipError(f"{path}: unreadable classifier head ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200]})") from None
    if weights.shape[0] != len(classes):
        raise TreeclipError(f"{path}: the species head has {weights.shape[0]} rows for {len(classes)} classes")
    weights /= np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12)
    return SpeciesHead(meta.get("objective", ""), weights, classes)


# -- heads fitted on labelled photos (`treeclip fit`) ---------------------------------
FIT_WEIGHTS = "head.safetensors"
FIT_CARD = "head.json"
FIT_FORMAT = 1
FIT_KINDS = ("centroid", "logistic")


@dataclass(frozen=True)
class FittedHead:
    """A classifier over the user's own classes, fitted on image embeddings of one model
    (`treeclip fit`). Its folder holds:

        head.safetensors   `weight` (n_classes, embed_dim), `bias` (n_classes,), `centre` (embed_dim,)
        head.json          the card: format, kind, classes, the model's fingerprint and spec,
                           counts, cross-validation numbers, fitting options, treeclip version

    `centroid` (SimpleShot CL2N): an embedding is centred on `centre` (the mean of the
    training embeddings) and L2-normalised; logits are its cosines with the unit-norm
    class centroids in `weight` (`bias` is zero), to be scaled by the model's logit scale.
    `logistic`: logits are `weight @ x + bias` on the L2-normalised embedding (`centre`
    is zero), already on the softmax's scale."""

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    centre: np.ndarray
    classes: list[str]
    card: dict

    def logits(self, features: np.ndarray, logit_scale: float = 1.0) -> np.ndarray:
        """(n, n_classes) logits of (n, dim) image embeddings; `logit_scale` multiplies
        the cosines of a centroid head (a logistic head has its own scale)."""
        x = _unit(np.asarray(features, np.float32))
        if self.kind == "centroid":
            return logit_scale * (_unit(x - self.centre) @ self.weight.T)
        return x @ self.weight.T + self.bias

    def probabilities(self, features: np.ndarray, logit_scale: float = 1.0) -> np.ndarray:
        """Softmax of `logits`."""
        z = self.logits(features, logit_scale)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The index of the best class of each embedding."""
        return np.argmax(self.logits(features), axis=1)

    def check_model(self, fingerprint: str, name: str, where: object) -> None:
        """One line (`TreeclipError`, naming `where`) when this head was fitted on another
        model than the one with `fingerprint` (called `name`)."""
        made_for = (self.card.get("model") or {}).get("fingerprint")
        if made_for != fingerprint:
            spec = (self.card.get("model") or {}).get("spec", "another model")
            raise TreeclipError(f"{where}: this head was fitted on {spec} (fingerprint {str(made_for)[:12]}), not on "
                                f"{name} (fingerprint {fingerprint[:12]}); fit one for this model")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def fitted_head(kind: str, weight: np.ndarray, bias: np.ndarray | None, centre: np.ndarray | None,
                classes: list[str], card: dict | None = None) -> FittedHead:
    """A `FittedHead` with its arrays as float32 (a missing bias or centre is zero);
    a centroid head's rows are made unit-norm."""
    if kind not in FIT_KINDS:
        raise TreeclipError(f"head kind {kind!r}: expected one of {', '.join(FIT_KINDS)}")
    weight = np.ascontiguousarray(weight, np.float32)
    if kind == "centroid":
        weight = _unit(weight)
    n, dim = weight.shape
    bias = np.zeros(n, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32).reshape(n)
    centre = np.zeros(dim, np.float32) if centre is None else np.ascontiguousarray(centre, np.float32).reshape(dim)
    if len(classes) != n:
        raise TreeclipError(f"a head with {n} rows for {len(classes)} classes")
    return FittedHead(kind, weight, bias, centre, list(classes), dict(card or {}))


def save_fitted_head(out_dir: str | Path, head: FittedHead, files: dict[str, bytes] | None = None) -> Path:
    """Write `head` (and `files`: name -> bytes, e.g. a plot) as the folder `out_dir`,
    atomically: everything goes to a temporary folder beside it that then replaces it,
    so a reader sees the old head or the new one, never half of each."""
    import shutil
    import tempfile

    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file({"weight": head.weight, "bias": head.bias, "centre": head.centre}, str(tmp / FIT_WEIGHTS),
                  metadata={"format": "np", "kind": head.kind})
        card = {**head.card, "format": FIT_FORMAT, "kind": head.kind, "classes": head.classes}
        (tmp / FIT_CARD).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        for f in tmp.iterdir():
            fsutil.fsync_path(f)
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)  # two renames: os.replace cannot swap a folder for a non-empty one
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_fitted_head(path: str | Path) -> bool:
    """Whether `path` is a head folder `treeclip fit` wrote."""
    return (Path(path) / FIT_CARD).is_file() and (Path(path) / FIT_WEIGHTS).is_file()


def read_fitted_head(path: str | Path) -> FittedHead:
    """The head in folder `path`; a one-line error when it is missing or unusable."""
    from safetensors.numpy import load_file

    where = Path(path)
    if not is_fitted_head(where):
        raise TreeclipError(f"{where}: not a head folder (no {FIT_CARD} and {FIT_WEIGHTS}); make one with treeclip fit")
    try:
        card = json.loads((where / FIT_CARD).read_text(encoding="utf-8"))
        arrays = load_file(str(where / FIT_WEIGHTS))
        if card.get("format") != FIT_FORMAT:
            raise ValueError(f"format {card.get('format')!r}, expected {FIT_FORMAT}")
        return fitted_head(card["kind"], arrays["weight"], arrays["bias"], arrays["centre"],
                           [str(c) for c in card["classes"]], card)
    except TreeclipError as err:
        raise TreeclipError(f"{where}: unusable head ({err})") from None
    except Exception as err:  # safetensors raises its own error type for a damaged file
        raise TreeclipError(f"{where}: unreadable head ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None


def head_fingerprint(path: str | Path) -> str:
    """sha256 of a head folder's weights and card: what a predict run with it is a function of."""
    import hashlib

    h = hashlib.sha256()
    for name in (FIT_WEIGHTS, FIT_CARD):
        h.update((Path(path) / name).read_bytes())
    return h.hexdigest()
