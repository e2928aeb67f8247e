"""`serve` over a published model and its published tree-of-life label set: the label set
is picked, subsets restrict it without re-encoding anything, the search is columnar."""

from __future__ import annotations

import pytest

from test_published import BIOCLIP2, hub, offline, photos  # noqa: F401 (fixtures)
from treeclip.runtime.options import InferenceOptions


def test_serve_engine_uses_the_published_label_set(offline, photos, monkeypatch):
    from treeclip.runtime import labels as label_module
    from treeclip.serve import ServeEngine

    def no_text_encoding(*args, **kwargs):
        raise AssertionError("a published label set must never be re-encoded")

    engine = ServeEngine(BIOCLIP2, options=InferenceOptions.for_verb("serve", templates="single"))
    monkeypatch.setattr(label_module, "label_embeddings", no_text_encoding)
    sets = offline[2]["200M"]
    assert len(engine.tree.columns) == len(sets) and engine.tree.label_set.embeddings is not None
    # a bare taxon name becomes a rank subset; the subset classifier shares the embeddings
    assert engine.subset_spec("Insecta") == "class=Insecta"
    assert engine.subset_spec("pica hudsonia") == "species=pica hudsonia"
    with pytest.raises(Exception, match="no taxon of that name"):
        engine.subset_spec("Nonexistentia")
    insects = engine.tree.restricted(engine.subset_spec("Insecta"))
    assert len(insects.columns) == sum(e[0][2] == "Insecta" for e in sets) and len(engine.tree.columns) == len(sets)
    assert insects.encoder is engine.tree.encoder
    feats = engine.tree.encoder(engine.pipeline.preprocess(photos[0].read_bytes(), "a.jpg").unsqueeze(0))
    rows = insects.rows_for(insects.probabilities(feats), rank="class", k=1)[0]
    assert rows[0]["class"] == "Insecta" and rows[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # search: exact and prefix matches first, scientific and common names included
    total, found = engine.search_taxa("pica hudsonia")
    assert total >= 1 and found[0]["name"] == "Pica hudsonia"
    total, found = engine.search_taxa("insecta", limit=2)
    assert total == len(insects.columns) and len(found) == 2 and all(t["class"] == "Insecta" for t in found)
