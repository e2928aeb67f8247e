"""Intrinsic analysis: hierarchy numbers on hand-built features with known answers, the
panel subsets, and the t-SNE figure for two models."""

import numpy as np
import pytest

from treeclip.evaluate.intrinsic import hierarchy_figure, hierarchy_measures, panel_subsets, tsne_figure
from treeclip.taxonomy.taxon import RANKS, Taxon

K = ("Animalia", "Arthropoda", "Insecta")


def test_hand_built_known_answers():
    taxa = [
        Taxon.of(*K, "Lepidoptera", "Nymphalidae", "Vanessa", "atalanta"),
        Taxon.of(*K, "Lepidoptera", "Nymphalidae", "Vanessa", "atalanta"),
        Taxon.of(*K, "Lepidoptera", "Nymphalidae", "Vanessa", "cardui"),
        Taxon.of(*K, "Coleoptera", "Carabidae", "Carabus", "auratus"),
    ]
    angles = np.radians([0, 10, 25, 90])
    feats = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    m = hierarchy_measures(feats, taxa, k=1)
    # nearest neighbours: 0->1 (same species, depth 7), 1->0 (7), 2->1 (genus, 6), 3->2 (class, 3)
    assert m["lca_depth"] == pytest.approx((7 + 7 + 6 + 3) / 4)
    assert m["ranks"]["species"]["knn_accuracy"] == 0.5
    assert m["ranks"]["genus"]["knn_accuracy"] == 0.75
    assert m["ranks"]["order"]["knn_accuracy"] == 0.75
    assert m["ranks"]["class"]["knn_accuracy"] == 1.0
    assert m["ranks"]["class"]["silhouette"] is None  # one taxon: undefined
    assert m["ranks"]["species"]["n_taxa"] == 3
    # random pairs of these four: depths of the 6 pairs are 7,6,6,3,3,3 -> chance ~4.67
    assert 4.0 < m["lca_depth_chance"] < 5.3


def tree_features(seed, n_per=4, structured=True):
    """Images of a 2-order x 2-family x 2-genus x 2-species tree; structured features add
    a random direction per taxon at every rank (weights falling with depth)."""
    rng = np.random.default_rng(seed)
    taxa, feats = [], []
    dirs: dict = {}
    for o in ("Lepidoptera", "Coleoptera"):
        for f in ("Aidae", "Bidae"):
            for g in ("Alpha", "Beta"):
                for s in ("one", "two"):
                    t = Taxon.of(*K, o, o[:4] + f, o[:3] + g, s)
                    for _ in range(n_per):
                        v = rng.normal(scale=0.3, size=24)
                        if structured:
                            for depth, key in enumerate([t.lineage[:r] for r in range(4, 8)]):
                                dirs.setdefault(key, rng.normal(size=24))
                                v = v + dirs[key] * (1.0 - 0.2 * depth)
                        taxa.append(t)
                        feats.append(v)
    return np.asarray(feats, np.float32), taxa


def test_structured_space_beats_random_space():
    f_tree, taxa = tree_features(0)
    f_flat, _ = tree_features(0, structured=False)
    tree, flat = hierarchy_measures(f_tree, taxa), hierarchy_measures(f_flat, taxa)
    assert tree["lca_depth"] > tree["lca_depth_chance"] + 1.5
    assert abs(flat["lca_depth"] - flat["lca_depth_chance"]) < 1.0
    assert tree["ranks"]["order"]["knn_accuracy"] > 0.9 > flat["ranks"]["order"]["knn_accuracy"]
    assert tree["ranks"]["order"]["silhouette"] > flat["ranks"]["order"]["silhouette"]


def test_panels_zoom_into_the_largest_taxon_of_the_rank_above():
    _, taxa = tree_features(0, n_per=1)
    taxa = taxa + [Taxon.of(*K, "Lepidoptera", "LepiAidae", "LepAlpha", "three")] * 3 + [None]
    panels = {p["rank"]: p for p in panel_subsets(taxa)}
    assert [p for p in RANKS] == list(panels)
    assert panels["kingdom"]["parent"] == "all images" and len(panels["kingdom"]["members"]) == len(taxa) - 1
    assert panels["order"]["parent"] == "Insecta"
    assert panels["family"]["parent"] == "Lepidoptera"
    assert set(panels["family"]["labels"]) == {"Lepiaidae", "Lepibidae"}
    assert panels["species"]["parent"] == "Lepalpha"
    assert sorted(set(panels["species"]["labels"])) == ["Lepalpha one", "Lepalpha three", "Lepalpha two"]


def test_tsne_figure_two_models(tmp_path):
    f_tree, taxa = tree_features(1, n_per=2)
    f_flat, _ = tree_features(1, n_per=2, structured=False)
    out = tmp_path / "tsne.png"
    info = tsne_figure({"tree": f_tree, "flat": f_flat}, taxa, out, perplexity=4)
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    by_rank = {p["rank"]: p for p in info}
    assert by_rank["order"]["drawn"] and by_rank["order"]["n"] == 32
    assert not by_rank["kingdom"]["drawn"]  # one kingdom: nothing to colour
    hierarchy_figure({"tree": hierarchy_measures(f_tree, taxa)}, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 5_000


def test_panels_nest_inside_the_previous_panel():
    # Order Lepidoptera has 6 images in two families; Coleoptera has 5 in one family,
    # the biggest family overall. The genus panel must stay inside Lepidoptera.
    lep = [Taxon.of(*K, "Lepidoptera", "Nymphalidae", "Vanessa", "atalanta")] * 3 + \
          [Taxon.of(*K, "Lepidoptera", "Pieridae", "Pieris", "rapae")] * 2 + \
          [Taxon.of(*K, "Lepidoptera", "Pieridae", "Colias", "croceus")]
    col = [Taxon.of(*K, "Coleoptera", "Carabidae", "Carabus", "auratus")] * 5
    panels = {p["rank"]: p for p in panel_subsets(lep + col)}
    assert panels["family"]["parent"] == "Lepidoptera"
    # 3 images each: Pieridae wins for having two genera to colour
    assert panels["genus"]["parent"] == "Pieridae"
    assert sorted(panels["genus"]["labels"]) == ["Colias", "Pieris", "Pieris"]
    assert panels["species"]["parent"] == "Pieris"  # the only genus left: one species, not drawn
