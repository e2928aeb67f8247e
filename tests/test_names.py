"""Name cleaning: authors and years, markers, repeated genus, case, whitespace, unicode."""

from __future__ import annotations

import pytest

from treeclip.taxonomy import (
    clean_common_name,
    clean_epithet,
    clean_kingdom,
    clean_uninomial,
    parse_scientific_name,
)


@pytest.mark.parametrize("raw, genus, epithet, infra", [
    ("Corvus corax Linnaeus, 1758", "Corvus", "corax", ""),
    ("Corvus corax (Linnaeus, 1758)", "Corvus", "corax", ""),
    ("Pica hudsonia (Sabine 1823)", "Pica", "hudsonia", ""),
    ("Abies alba Mill.", "Abies", "alba", ""),
    ("Pica pica de Witt", "Pica", "pica", ""),
    ("Quercus robur subsp. pedunculiflora", "Quercus", "robur", "pedunculiflora"),
    ("Quercus robur ssp pedunculiflora", "Quercus", "robur", "pedunculiflora"),
    ("Rosa canina var. lutetiana (Léman) Baker", "Rosa", "canina", "lutetiana"),
    ("Canis lupus familiaris", "Canis", "lupus", "familiaris"),
    ("  Pica   hudsonia  ", "Pica", "hudsonia", ""),
    ("PICA HUDSONIA", "Pica", "hudsonia", ""),
    ("pica hudsonia", "Pica", "hudsonia", ""),
    ("Pica sp.", "Pica", "", ""),
    ("Pica sp", "Pica", "", ""),
    ("Pica cf. hudsonia", "Pica", "", ""),
    ("Pica aff. hudsonia", "Pica", "", ""),
    ("Corvidae", "Corvidae", "", ""),
    ("Mentha x piperita L.", "Mentha", "×piperita", ""),
    ("Mentha × piperita", "Mentha", "×piperita", ""),
    ("Mentha ×piperita", "Mentha", "×piperita", ""),
    ("× Triticosecale", "×Triticosecale", "", ""),
    ("Pica\u00a0hudsonia", "Pica", "hudsonia", ""),  # no-break space
])
def test_parse_scientific_name(raw: str, genus: str, epithet: str, infra: str) -> None:
    name = parse_scientific_name(raw)
    assert (name.genus, name.epithet, name.infraspecific) == (genus, epithet, infra)


@pytest.mark.parametrize("raw", ["", "   ", None, float("nan"), "123", "(Linnaeus, 1758)"])
def test_parse_nothing_name_like(raw) -> None:
    assert str(parse_scientific_name(raw)) == ""


@pytest.mark.parametrize("field, genus, expected", [
    ("hudsonia", "Pica", "hudsonia"),
    ("Pica hudsonia", "Pica", "hudsonia"),  # genus repeated in the species field
    ("pica hudsonia", "Pica", "hudsonia"),
    ("Hudsonia", "Pica", "hudsonia"),
    ("corax Linnaeus, 1758", "Corvus", "corax"),
    ("robur subsp. pedunculiflora", "Quercus", "robur"),
    ("x piperita", "Mentha", "×piperita"),
    ("×piperita", "Mentha", "×piperita"),
    ("hudsonia", "", "hudsonia"),
    ("", "Pica", ""),
    ("sp.", "Pica", ""),
    (None, "Pica", ""),
])
def test_clean_epithet(field, genus: str, expected: str) -> None:
    assert clean_epithet(field, genus) == expected


@pytest.mark.parametrize("raw, expected", [
    ("corvidae", "Corvidae"),
    ("CORVIDAE", "Corvidae"),
    ("Corvidae Vigors, 1825", "Corvidae"),
    ("  Aves ", "Aves"),
    ("×Triticosecale", "×Triticosecale"),
    ("123", ""),
    ("", ""),
])
def test_clean_uninomial(raw: str, expected: str) -> None:
    assert clean_uninomial(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("Metazoa", "Animalia"), ("metazoa", "Animalia"), ("Viridiplantae", "Plantae"),
    ("Archaeplastida", "Plantae"), ("Chloroplastida", "Plantae"), ("Fungi", "Fungi"),
    ("Animalia", "Animalia"), ("", ""),
])
def test_clean_kingdom(raw: str, expected: str) -> None:
    assert clean_kingdom(raw) == expected


def test_clean_common_name_keeps_accents_and_case() -> None:
    assert clean_common_name("  Bewick\u2019s   wren ") == "Bewick's wren"
    decomposed = "me\u0301sange charbonnie\u0300re"  # combining accents -> NFC
    assert clean_common_name(decomposed) == "mésange charbonnière"
    assert clean_common_name(None) == "" and clean_common_name(float("nan")) == ""
