"""Rank aggregation, bins, top-k and roll-up against plain per-image dict computations, and
scoring against a memory-mapped label matrix a block at a time."""

from __future__ import annotations

import collections
import random
from pathlib import Path

import numpy as np
import pytest

from predict_helpers import TAXA
from treeclip.predict import aggregate as agg
from treeclip.taxonomy.taxon import RANKS, Taxon


def random_taxa(n: int, seed: int = 0) -> list[Taxon]:
    rng = random.Random(seed)
    taxa = set()
    while len(taxa) < n:
        lineage = [f"K{rng.randrange(2)}", f"P{rng.randrange(3)}", f"C{rng.randrange(3)}", f"O{rng.randrange(4)}",
                   f"F{rng.randrange(4)}", f"G{rng.randrange(5)}", f"s{rng.randrange(30)}"]
        if rng.random() < 0.15:
            lineage[rng.randrange(1, 5)] = ""  # a gap in the lineage must not lose the taxon
        taxa.add(Taxon(tuple(lineage), f"c{rng.randrange(9)}"))
    return sorted(taxa, key=lambda t: (rng.random(),))  # unsorted on purpose


def dict_reference(probs: np.ndarray, taxa: list[Taxon], rank: str) -> list[dict[tuple, float]]:
    """pybioclip's way: per image, a dict from the lineage down to `rank` to summed probability."""
    depth = RANKS.index(rank) + 1
    out = []
    for row in probs:
        sums: dict[tuple, float] = collections.defaultdict(float)
        for p, t in zip(row, taxa):
            sums[t.lineage[:depth]] += float(p)
        out.append(dict(sums))
    return out


@pytest.mark.parametrize("rank", RANKS)
def test_aggregate_equals_dict_reference_at_every_rank(rank):
    taxa = random_taxa(300)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(7, len(taxa))) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    order = agg.sort_taxa(taxa)
    index = agg.RankIndex([taxa[i] for i in order])
    summed = index.aggregate(probs[:, order], rank)
    groups = index.groups(rank)
    reference = dict_reference(probs, taxa, rank)
    depth = RANKS.index(rank) + 1
    for n in range(len(probs)):
        got = {groups.taxa[g].lineage[:depth]: summed[n, g] for g in range(len(groups))}
        assert got.keys() == reference[n].keys()
        for key, value in reference[n].items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12)
        assert summed[n].sum() == pytest.approx(1.0)


def test_groups_keep_homonyms_and_gaps_apart():
    order = agg.sort_taxa(TAXA)
    index = agg.RankIndex([TAXA[i] for i in order])
    genera = [t.lineage[:6] for t in index.groups("genus").taxa]
    assert sum(1 for g in genera if g[5] == "Morus") == 2  # the gannet and the mulberry
    families = [t.family for t in index.groups("family").taxa]
    assert "" in families  # Acronicta's unknown family is a group, not dropped
    assert len(index.groups("species")) == len(TAXA)
    assert index.groups("species").taxa[0].common  # species groups keep the common name
    assert all(not t.common for t in index.groups("genus").taxa)


def test_rank_index_refuses_unsorted_taxa():
    with pytest.raises(ValueError, match="sorted"):
        agg.RankIndex(list(reversed(sorted(TAXA, key=lambda t: t.lineage))))


def test_group_sum_matches_loop():
    rng = np.random.default_rng(0)
    values = rng.random((5, 11)).astype(np.float32)
    codes = rng.integers(0, 4, 11)
    got = agg.group_sum(values, codes, 4)
    for n in range(5):
        for g in range(4):
            assert got[n, g] == pytest.approx(values[n, codes == g].sum(), rel=1e-6)


def test_top_k_orders_best_first_and_breaks_ties_by_index():
    scores = np.array([[0.1, 0.4, 0.4, 0.05, 0.05], [0.5, 0.2, 0.1, 0.1, 0.1]])
    idx, vals = agg.top_k(scores, 3)
    assert idx.tolist() == [[1, 2, 0], [0, 1, 2]]
    assert vals[0].tolist() == pytest.approx([0.4, 0.4, 0.1])
    idx, _ = agg.top_k(scores, 99)  # k larger than the labels: all of them
    assert idx.shape == (2, 5)


def test_roll_up_answers_at_the_deepest_confident_rank():
    order = agg.sort_taxa(TAXA)
    taxa = [TAXA[i] for i in order]
    index = agg.RankIndex(taxa)
    pos = {t.scientific_name: i for i, t in enumerate(taxa)}
    probs = np.zeros((4, len(taxa)))
    probs[0, pos["Pica hudsonia"]] = 0.9                  # confident species
    probs[0, pos["Corvus corax"]] = 0.1
    probs[1, pos["Pica hudsonia"]] = 0.45                 # genus Pica = 0.9
    probs[1, pos["Pica pica"]] = 0.45
    probs[1, pos["Morus alba"]] = 0.1
    probs[2, pos["Pica hudsonia"]] = 0.3                  # family Corvidae = 0.6, order 0.6, class Aves 0.85
    probs[2, pos["Corvus corax"]] = 0.3
    probs[2, pos["Morus bassanus"]] = 0.25
    probs[2, pos["Rosa canina"]] = 0.15
    probs[3, pos["Pica hudsonia"]] = 0.5                  # kingdoms split 0.5 / 0.5: unknown
    probs[3, pos["Rosa canina"]] = 0.5
    answers = agg.roll_up(probs, index, 0.8)
    assert [a.rank for a in answers] == ["species", "genus", "class", "unknown"]
    assert answers[0].taxon.scientific_name == "Pica hudsonia"
    assert answers[1].taxon.genus == "Pica" and answers[1].score == pytest.approx(0.9)
    assert answers[2].taxon.class_ == "Aves" and answers[2].score == pytest.approx(0.85)
    assert answers[3].taxon is None and answers[3].score == pytest.approx(0.5)


def test_lineage_order_equals_sorting_taxon_tuples():
    taxa = random_taxa(500, seed=3) + random_taxa(50, seed=3)  # with duplicates: a stable order
    want = sorted(range(len(taxa)), key=lambda i: (taxa[i].lineage, taxa[i].common))
    assert agg.sort_taxa(taxa).tolist() == want


def test_columns_from_raw_names_equal_taxon_objects(tmp_path):
    from treeclip.runtime.taxa_columns import TaxaColumns

    raw = [["animalia", " Chordata", "AVES", "Passeriformes", "Corvidae", "Pica", "Hudsonia"],
           ["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia"],
           ["Plantae", None, "Magnoliopsida", "Rosales", "", "Rosa", "canina"],
           ["x", "Tracheophyta", "Liliopsida", "Poales", "Poaceae", "×Triticosecale", "novae-angliae"],
           ["Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "muscaria"]]
    common = ["black-billed  magpie", None, "dog rose", "mésange\u0301", "fly agaric"]
    columns = TaxaColumns.from_names({**{r: [row[i] for row in raw] for i, r in enumerate(RANKS)}, "common": common},
                                     len(raw))
    assert columns.to_taxa() == [Taxon(tuple(row), c or "") for row, c in zip(raw, common)]
    assert columns.names["kingdom"] == ["Animalia", "Fungi", "Plantae", "X"]  # "animalia" is "Animalia"
    columns.save(tmp_path / "c.npz", order=columns.lineage_order())
    again, extra = TaxaColumns.load(tmp_path / "c.npz")
    assert again.to_taxa() == columns.to_taxa() and extra["order"].tolist() == columns.lineage_order().tolist()


def test_columnar_index_equals_the_dict_reference_on_many_taxa():
    from treeclip.runtime.taxa_columns import TaxaColumns

    taxa = random_taxa(3000, seed=5)
    columns = TaxaColumns.from_taxa(taxa)
    order = columns.lineage_order()
    index = agg.RankIndex(columns.take(order))
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(len(taxa)) * 0.05, size=3)
    for rank in ("genus", "order", "kingdom"):
        summed = index.aggregate(probs[:, order], rank)
        groups = index.groups(rank)
        depth = RANKS.index(rank) + 1
        for n, ref in enumerate(dict_reference(probs, taxa, rank)):
            got = {groups.taxa[g].lineage[:depth]: summed[n, g] for g in range(len(groups))}
            assert got.keys() == ref.keys()
            assert all(got[key] == pytest.approx(v, abs=1e-12) for key, v in ref.items())
    with pytest.raises(ValueError, match="sorted"):
        agg.RankIndex(columns.take(order[::-1]))


def test_index_over_taxa_in_any_order_sums_like_the_sorted_one():
    from treeclip.runtime.taxa_columns import TaxaColumns

    taxa = random_taxa(800, seed=9)  # unsorted on purpose, as a published file may be
    columns = TaxaColumns.from_taxa(taxa)
    order = columns.lineage_order()
    as_is, by_lineage = agg.RankIndex(columns, any_order=True), agg.RankIndex(columns.take(order))
    probs = np.random.default_rng(4).dirichlet(np.ones(len(taxa)), size=4)
    for rank in RANKS:
        got, want = as_is.aggregate(probs, rank), by_lineage.aggregate(probs[:, order], rank)
        g_names = [t.lineage for t in as_is.groups(rank).taxa]
        w_names = [t.lineage for t in by_lineage.groups(rank).taxa]
        assert sorted(g_names) == sorted(w_names)
        position = {name: i for i, name in enumerate(w_names)}
        np.testing.assert_allclose(got, want[:, [position[n] for n in g_names]], rtol=1e-6, atol=1e-12)


def test_top_k_of_wide_rows_one_at_a_time_is_the_same(monkeypatch):
    rng = np.random.default_rng(0)
    scores = rng.random((4, 3000)).astype(np.float32)
    scores[1, 10] = scores[1, 20] = 2.0  # a tie: the lower index first
    want = agg.top_k(scores, 7)
    monkeypatch.setattr(agg, "WIDE_ROWS", 100)
    got = agg.top_k(scores, 7)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert got[0][1, :2].tolist() == [10, 20]


def _resident_bytes(path: Path) -> int:
    """Resident bytes of this process's mappings of `path` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps", encoding="utf-8"):
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and first == "Rss:":
            total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc/self/smaps")
def test_scoring_keeps_only_a_block_of_the_mapped_matrix_resident(tmp_path):
    from treeclip.runtime.labelsets import LabelMatrix

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((64, 40_000)).astype(np.float32)  # 10 MB
    np.save(tmp_path / "m.npy", matrix)
    mapped = np.load(tmp_path / "m.npy", mmap_mode="r")
    features = rng.standard_normal((3, 64)).astype(np.float32)
    scorer = LabelMatrix(mapped, block_bytes=8 * 40_000 * 4)  # 8 rows (1.3 MB) at a time
    assert scorer.rows == 8
    np.testing.assert_allclose(scorer.logits(features), features @ matrix, rtol=1e-5, atol=1e-4)
    assert _resident_bytes(tmp_path / "m.npy") < 2 * 8 * 40_000 * 4
    np.asarray(mapped).sum()  # reading it whole makes it resident: the measure sees pages
    assert _resident_bytes(tmp_path / "m.npy") > 9_000_000
