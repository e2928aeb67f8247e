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
