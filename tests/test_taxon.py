"""Taxon: name formats, every caption's exact string, fallbacks, truncation, lineage comparison."""

from __future__ import annotations

import subprocess
import sys

import pytest

from treeclip.taxonomy import MIXED_TEXT_TYPES, RANKS, TEXT_TYPES, Taxon, rank_index
from treeclip.taxonomy.templates import BIOCLIP_TEMPLATES, OPENAI_IMAGENET_TEMPLATES, load_templates

MAGPIE = Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia",
                  common="black-billed magpie")
TAXONOMIC = "Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia"
TAGGED = ("kingdom Animalia phylum Chordata class Aves order Passeriformes family Corvidae "
          "genus Pica species hudsonia")


def test_name_formats() -> None:
    assert MAGPIE.taxonomic_name == TAXONOMIC
    assert MAGPIE.scientific_name == "Pica hudsonia"
    assert MAGPIE.common_name == "black-billed magpie"
    assert MAGPIE.tagged_name == TAGGED
    assert str(MAGPIE) == TAXONOMIC


def test_every_caption_exact() -> None:
    expected = {
        "com": "a photo of black-billed magpie.",
        "sci": "a photo of Pica hudsonia.",
        "taxon": f"a photo of {TAXONOMIC}.",
        "sci_com": "a photo of Pica hudsonia with common name black-billed magpie.",
        "taxon_com": f"a photo of {TAXONOMIC} with common name black-billed magpie.",
        "taxonTag": f"a photo of {TAGGED}.",
        "taxonTag_com": f"a photo of {TAGGED} with common name black-billed magpie.",
    }
    assert MAGPIE.captions() == expected
    assert tuple(expected) == TEXT_TYPES
    assert set(MIXED_TEXT_TYPES) == {"com", "sci", "taxon", "sci_com", "taxon_com"}
    with pytest.raises(ValueError, match="unknown text type"):
        MAGPIE.caption("latin")


def test_common_name_fallbacks() -> None:
    no_common = Taxon(MAGPIE.lineage)
    assert no_common.common_name == "Pica hudsonia"  # -> scientific
    assert no_common.caption("com") == "a photo of Pica hudsonia."
    assert no_common.caption("sci_com") == "a photo of Pica hudsonia with common name Pica hudsonia."
    family_only = Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae")
    assert family_only.scientific_name == "Corvidae"  # no genus: the lowest named rank
    assert family_only.common_name == "Corvidae"
    assert Taxon.of().common_name == ""
    assert Taxon.of().is_empty and Taxon.of().lowest_rank is None


def test_empty_middle_rank_is_dropped() -> None:
    gap = Taxon.of("Animalia", "Arthropoda", "Insecta", "", "Apidae", "Apis", "mellifera")
    assert gap.taxonomic_name == "Animalia Arthropoda Insecta Apidae Apis mellifera"
    assert gap.tagged_name == ("kingdom Animalia phylum Arthropoda class Insecta family Apidae "
                               "genus Apis species mellifera")


def test_cleaning_on_construction() -> None:
    t = Taxon(("  animalia", "CHORDATA", "aves ", None, float("nan"), "pica", " Hudsonia "), "  black-billed   magpie ")
    assert t.lineage == ("Animalia", "Chordata", "Aves", "", "", "Pica", "hudsonia")
    assert t.common == "black-billed magpie"
    assert hash(t) == hash(Taxon(t.lineage, t.common)) and t == Taxon(t.lineage, t.common)
    with pytest.raises(ValueError, match="7 ranks"):
        Taxon(("Animalia",))
    with pytest.raises(ValueError, match="at most 7"):
        Taxon.of(*"abcdefgh")
    with pytest.raises(AttributeError):
        t.common = "x"  # immutable


def test_from_ranks_and_access() -> None:
    t = Taxon.from_ranks({"kingdom": "Plantae", "genus": "Quercus", "species": "alba", "common": "white oak"})
    assert t.common == "white oak" and t["genus"] == "Quercus" and t.genus == "Quercus"
    assert t.species == "alba" and t.class_ == "" and t.lowest_rank == "species"
    assert Taxon.from_ranks(t.as_dict()) == t
    assert rank_index("kingdom") == 0 and rank_index("species") == 6
    with pytest.raises(ValueError, match="unknown rank"):
        t["tribe"]


def test_at_truncates_and_drops_common() -> None:
    genus = MAGPIE.at("genus")
    assert genus.lineage == MAGPIE.lineage[:6] + ("",)
    assert genus.common == ""  # the common name belongs to the species
    assert MAGPIE.at("species") is MAGPIE
    assert MAGPIE.at("kingdom").taxonomic_name == "Animalia"
    assert [MAGPIE.at(r).lowest_rank for r in RANKS] == list(RANKS)


def test_lowest_common_rank() -> None:
    raven = Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax")
    gannet = Taxon.of("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus")
    mulberry = Taxon.of("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba")
    assert MAGPIE.lowest_common_rank(raven) == "family"
    assert MAGPIE.lowest_common_rank(gannet) == "class"
    assert gannet.lowest_common_rank(mulberry) is None  # same genus name, different kingdoms
    assert MAGPIE.lowest_common_rank(MAGPIE) == "species"
    gap_a = Taxon.of("Animalia", "", "Insecta", "Diptera")
    gap_b = Taxon.of("Animalia", "", "Insecta", "Coleoptera")
    assert gap_a.lowest_common_rank(gap_b) == "class"


def test_hybrid_names_keep_sign() -> None:
    mint = Taxon.of("Plantae", "Tracheophyta", "Magnoliopsida", "Lamiales", "Lamiaceae", "Mentha", "×piperita")
    assert mint.scientific_name == "Mentha ×piperita"
    triticale = Taxon.of("Plantae", "Tracheophyta", "Liliopsida", "Poales", "Poaceae", "×triticosecale")
    assert triticale.genus == "×Triticosecale"


def test_templates_are_open_clips_strings_in_its_order() -> None:
    """The 80 templates come from open_clip (label-cache keys and results depend on the
    exact strings and their order): open_clip's lambdas called with "{}", as they were
    when treeclip kept a copy."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES as theirs

    assert OPENAI_IMAGENET_TEMPLATES == tuple(t("{}") for t in theirs)
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert OPENAI_IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert OPENAI_IMAGENET_TEMPLATES[39] == "a photo of a {}."
    assert OPENAI_IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert len(BIOCLIP_TEMPLATES) == 81 and BIOCLIP_TEMPLATES[0] == "a photo of {}."
    assert BIOCLIP_TEMPLATES[1:] == OPENAI_IMAGENET_TEMPLATES


def test_templates_do_not_import_open_clip_or_torch() -> None:
    code = ("import sys\nfrom treeclip.taxonomy import BIOCLIP_TEMPLATES\n"
            "print(len(BIOCLIP_TEMPLATES), 'open_clip' in sys.modules, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["81", "False", "False"]


def test_templates_as_data(tmp_path) -> None:
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80 and len(set(OPENAI_IMAGENET_TEMPLATES)) == 80
    assert len(BIOCLIP_TEMPLATES) == 81 and BIOCLIP_TEMPLATES[0] == "a photo of {}."
    assert all(t.count("{}") == 1 for t in BIOCLIP_TEMPLATES)
    assert load_templates("bioclip") == BIOCLIP_TEMPLATES
    f = tmp_path / "t.txt"
    f.write_text("a photo of {}.\n\nan image of {}.\n", encoding="utf-8")
    assert load_templates(str(f)) == ("a photo of {}.", "an image of {}.")
    f.write_text("no placeholder\n", encoding="utf-8")
    with pytest.raises(ValueError, match="exactly one"):
        load_templates(str(f))
    with pytest.raises(ValueError, match="not a template set"):
        load_templates(str(tmp_path / "missing.txt"))
