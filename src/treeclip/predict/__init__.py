"""Predict and embed: classify organism images at any rank of the tree of life.

    from treeclip.predict import load_model, TreeOfLifeClassifier, CustomLabelsClassifier
    clf = TreeOfLifeClassifier("runs/demo/model")                 # the model's taxa.parquet
    clf.predict(["a.jpg", "photos/"], rank="family", k=3)         # list of row dicts
    CustomLabelsClassifier("runs/demo/model", ["crow", "magpie"]).predict("a.jpg")
    BinningClassifier(model, {"crow": "corvid", "magpie": "corvid", "robin": "other"})
    HeadClassifier(model, "my-head/").predict("photos/", k=3)     # a head from `treeclip fit`
    embed_images(model, "photos/").vectors

Names are imported on first use, so importing this package is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from treeclip.model import load_model
    from treeclip.predict.classifiers import (BinningClassifier, CustomLabelsClassifier, HeadClassifier,
                                              TreeOfLifeClassifier)
    from treeclip.predict.embed import Embeddings, embed_images, write_embeddings

_LAZY = {
    "load_model": "treeclip.model",
    "TreeOfLifeClassifier": "treeclip.predict.classifiers",
    "CustomLabelsClassifier": "treeclip.predict.classifiers",
    "BinningClassifier": "treeclip.predict.classifiers",
    "HeadClassifier": "treeclip.predict.classifiers",
    "embed_images": "treeclip.predict.embed",
    "write_embeddings": "treeclip.predict.embed",
    "Embeddings": "treeclip.predict.embed",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'treeclip.predict' has no attribute {name!r}")
