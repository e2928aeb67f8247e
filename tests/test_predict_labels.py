"""Taxa tables, subsets, custom labels, bins and the label-embedding cache."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from predict_helpers import MODEL, TAXA, save_model_dir, write_taxa_csv
from treeclip.cache import CachePaths
from treeclip.errors import TreeclipError
from treeclip.predict import labels as L
from treeclip.runtime import labels as E
from treeclip.taxonomy.taxon import RANKS


def test_taxa_table_csv_with_binomials_and_common_names(tmp_path):
    taxa = L.read_taxa_table(write_taxa_csv(tmp_path / "t.csv"))
    assert taxa == TAXA
    epithets = L.read_taxa_table(write_taxa_csv(tmp_path / "e.csv", binomial=False))
    assert epithets == TAXA


def test_taxa_table_parquet_and_pybioclip_species_epithet(tmp_path):
    cols = {r: [t[r] for t in TAXA] for r in RANKS}
    cols["species"] = [t.scientific_name for t in TAXA]
    cols["species_epithet"] = [t.species for t in TAXA]
    cols["common"] = [t.common for t in TAXA]
    pq.write_table(pa.table(cols), tmp_path / "t.parquet")
    assert L.read_taxa_table(tmp_path / "t.parquet") == TAXA


def test_taxa_table_errors_are_one_line(tmp_path):
    (tmp_path / "bad.csv").write_text("name,colour\nx,y\n")
    with pytest.raises(TreeclipError, match="bad.csv: no rank columns"):
        L.read_taxa_table(tmp_path / "bad.csv")
    (tmp_path / "latin1.csv").write_bytes("kingdom,genus\nAnimalia,M\xfcller\n".encode("latin-1"))
    with pytest.raises(TreeclipError, match="latin1.csv: not UTF-8"):
        L.read_taxa_table(tmp_path / "latin1.csv")
    with pytest.raises(TreeclipError, match="missing.csv: file not found"):
        L.read_taxa_table(tmp_path / "missing.csv")


def test_load_taxa_from_model_dir_and_ncbi(tmp_path):
    model_dir = save_model_dir(tmp_path / "model")
    assert L.load_taxa(None, str(model_dir)) == TAXA
    assert L.load_taxa(None, f"local-dir:{model_dir}") == TAXA
    with pytest.raises(TreeclipError, match="no taxa.parquet"):
        L.load_taxa(None, MODEL)
    corvus = L.load_taxa("ncbi:Corvus", limit=3)
    assert len(corvus) == 3
    assert all(t.genus == "Corvus" and t.family == "Corvidae" and t.kingdom == "Animalia" for t in corvus)


def test_subset_by_rank_values(tmp_path):
    keep = L.subset_mask(TAXA, "class=Insecta")
    assert [t.class_ for t, k in zip(TAXA, keep) if k] == ["Insecta"] * 3
    keep = L.subset_mask(TAXA, "family=Corvidae,Moraceae")
    assert {t.family for t, k in zip(TAXA, keep) if k} == {"Corvidae", "Moraceae"}
    keep = L.subset_mask(TAXA, "species=Pica pica")
    assert [t.scientific_name for t, k in zip(TAXA, keep) if k] == ["Pica pica"]
    with pytest.raises(TreeclipError, match="matches none"):
        L.subset_mask(TAXA, "order=Diptera")
    with pytest.raises(TreeclipError, match="neither RANK=NAME"):
        L.subset_mask(TAXA, "tribe=Foo")


def test_subset_files(tmp_path, caplog):
    (tmp_path / "regional.txt").write_text("Pica hudsonia\nMorus alba\n# comment\nCoccinellidae\nNotaspecies x\n")
    keep = L.subset_mask(TAXA, str(tmp_path / "regional.txt"))
    assert {t.scientific_name for t, k in zip(TAXA, keep) if k} == {"Pica hudsonia", "Morus alba", "Coccinella septempunctata"}
    assert "Notaspecies x" in caplog.text
    (tmp_path / "fam.csv").write_text("family\nCorvidae\nRosaceae\n")  # pybioclip's layout
    keep = L.subset_mask(TAXA, str(tmp_path / "fam.csv"))
    assert {t.family for t, k in zip(TAXA, keep) if k} == {"Corvidae", "Rosaceae"}
    (tmp_path / "rows.csv").write_text("genus,species\nMorus,alba\n")  # all cells of a row must match
    keep = L.subset_mask(TAXA, str(tmp_path / "rows.csv"))
    assert [t.scientific_name for t, k in zip(TAXA, keep) if k] == ["Morus alba"]


def test_subset_parquet_file_is_read_as_a_table(tmp_path):
    """A Parquet subset is binary: it must be read as a table, never as UTF-8 text first."""
    pq.write_table(pa.table({"family": ["Corvidae", "Rosaceae"]}), tmp_path / "fam.parquet")
    keep = L.subset_mask(TAXA, str(tmp_path / "fam.parquet"))
    assert {t.family for t, k in zip(TAXA, keep) if k} == {"Corvidae", "Rosaceae"}


def test_custom_labels_handle_commas_files_and_duplicates(tmp_path):
    assert L.parse_labels('crow, "magpie, black-billed",raven,crow') == ["crow", "magpie, black-billed", "raven"]
    (tmp_path / "cls.txt").write_text("Pica pica, Eurasian magpie\ncrow\n\n")
    assert L.parse_labels(str(tmp_path / "cls.txt")) == ["Pica pica, Eurasian magpie", "crow"]
    (tmp_path / "cls.csv").write_text('label,notes\n"a, b",x\nc,y\n')
    assert L.parse_labels(str(tmp_path / "cls.csv")) == ["a, b", "c"]
    with pytest.raises(TreeclipError, match="no labels"):
        L.parse_labels(" , ")


def test_bins(tmp_path):
    (tmp_path / "bins.csv").write_text("cls,bin\ncrow,corvid\nmagpie,corvid\nrose,plant\n")
    assert L.parse_bins(tmp_path / "bins.csv") == {"crow": "corvid", "magpie": "corvid", "rose": "plant"}
    (tmp_path / "two.csv").write_text("cls,bin\ncrow,corvid\ncrow,bird\n")
    with pytest.raises(TreeclipError, match="two.csv: line 3: 'crow' is in two bins"):
        L.parse_bins(tmp_path / "two.csv")


class CountingModel:
    """A real tiny ClipModel whose text encoder counts the captions it is asked for."""

    def __init__(self, clip):
        self.clip, self.captions = clip, 0
        self.embed_dim, self.fingerprint = clip.embed_dim, clip.fingerprint

    def encode_texts(self, texts, batch_size=256):
        self.captions += len(texts)
        return self.clip.encode_texts(texts, batch_size)


@pytest.fixture(scope="module")
def clip():
    from treeclip.model import create_model

    return create_model(MODEL, seed=0)


def test_label_cache_is_reused_and_keyed(tmp_path, clip):
    model = CountingModel(clip)
    texts = L.taxon_texts(TAXA)
    first = E.label_embeddings(model, texts, ["a photo of {}."], caches=CachePaths(tmp_path), chunk=4)
    assert model.captions == len(TAXA)
    assert first.shape == (len(TAXA), clip.embed_dim)
    assert np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    again = E.label_embeddings(model, texts, ["a photo of {}."], caches=CachePaths(tmp_path), chunk=4)
    assert model.captions == len(TAXA)  # nothing encoded the second time
    assert np.array_equal(first, again)
    assert sorted(p.suffix for p in (tmp_path / "labels").iterdir()) == [".npy", ".parquet"]  # names + embeddings
    two = E.label_embeddings(model, texts, ["a photo of {}.", "a {}."], caches=CachePaths(tmp_path))
    assert model.captions == 3 * len(TAXA)  # other templates: another entry
    assert not np.allclose(two, first)
    # a killed run resumes from its finished chunks
    key = E.cache_key(clip.fingerprint(), texts[:6], ["x {}."])
    parts = tmp_path / "labels" / f"{key[:40]}.parts"
    parts.mkdir(parents=True)
    np.save(parts / f"part-{0:09d}.npy", E.label_embeddings(clip, texts[:4], ["x {}."], caches=CachePaths(tmp_path / "other")))
    model.captions = 0
    resumed = E.label_embeddings(model, texts[:6], ["x {}."], caches=CachePaths(tmp_path), chunk=4)
    assert model.captions == 2
    assert np.allclose(resumed, E.label_embeddings(clip, texts[:6], ["x {}."], caches=CachePaths(tmp_path / "fresh")), atol=1e-6)
    assert not parts.exists()  # the parts go once the whole entry is saved
    # persist=False: the same embeddings, and not a file read or written
    model.captions = 0
    memory = E.label_embeddings(model, texts[:6], ["x {}."], caches=CachePaths(tmp_path / "never"), persist=False)
    assert model.captions == 6 and not (tmp_path / "never").exists()
    assert np.allclose(memory, resumed, atol=1e-6)


def test_default_label_cache_is_under_treeclip_cache(tmp_path, monkeypatch, clip):
    monkeypatch.setenv("TREECLIP_CACHE", str(tmp_path / "root"))
    E.label_embeddings(clip, ["Pica pica"], ["a photo of {}."])
    assert len(list((tmp_path / "root" / "labels").glob("*.npy"))) == 1


def test_subset_binomials_without_genus_column_and_common_names(tmp_path):
    (tmp_path / "sp.csv").write_text("species\nPica pica\nMorus alba\n")
    keep = L.subset_mask(TAXA, str(tmp_path / "sp.csv"))
    assert {t.scientific_name for t, k in zip(TAXA, keep) if k} == {"Pica pica", "Morus alba"}
    keep = L.subset_mask(TAXA, "common_name=monarch,dog rose")
    assert {t.scientific_name for t, k in zip(TAXA, keep) if k} == {"Danaus plexippus", "Rosa canina"}
    with pytest.raises(TreeclipError, match="no taxa table"):
        L.load_taxa(None, None)
