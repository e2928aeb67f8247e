"""Cleaning of scientific and common names, as done when building TreeOfLife data.

Decisions (documented in docs/taxonomy.md):
- Unicode is NFC-normalised; accented letters in common names are kept (`Bewick's wren`,
  `mésange charbonnière` stay as written), only whitespace is collapsed.
- Authors and years are dropped: `Corvus corax Linnaeus, 1758` -> `Corvus corax`.
- Infraspecific markers (`ssp.`, `subsp.`, `var.`, `f.`, `forma`, `cv.`) are dropped; the
  infraspecific epithet is returned apart, since the 7 ranks end at the species.
- A hybrid sign (`×`, or a lone `x`/`X` between names) is kept and written `×` glued to the
  name it qualifies (`Mentha ×piperita`, `×Triticosecale`): a hybrid is a different taxon.
- A genus repeated in the species field is removed (`species="Pica hudsonia"`, genus `Pica`).
- Open nomenclature (`sp.`, `spp.`, `cf.`, `aff.`, `indet.`) ends the name: `Pica cf. hudsonia`
  is only known to genus, so it is read as `Pica` (an `aff.` taxon is not `hudsonia` at all).
- Kingdom synonyms map to BioCLIP's kingdom names (Metazoa -> Animalia, Viridiplantae,
  Archaeplastida, Chloroplastida -> Plantae; `clean_kingdom`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_INFRA_MARKERS = {"ssp.", "ssp", "subsp.", "subsp", "var.", "var", "f.", "forma", "cv.", "subvar.", "morph"}
# Lower-case words that start an author citation rather than an epithet.
_AUTHOR_PARTICLES = {"van", "von", "de", "der", "den", "du", "da", "la", "le", "ex", "et", "in", "&", "d'", "al."}
# Open-nomenclature qualifiers: what follows is not a determined epithet.
_OPEN_NOMENCLATURE = {"sp.", "sp", "spp.", "spp", "cf.", "cf", "aff.", "aff", "indet.", "indet", "nr.", "sp.nov."}
KINGDOM_SYNONYMS: dict[str, str] = {
    "Metazoa": "Animalia",
    "Viridiplantae": "Plantae",
    "Archaeplastida": "Plantae",
    "Chloroplastida": "Plantae",
}
"""Kingdom names other references use, mapped to the names BioCLIP's data uses."""
_HYBRID = "×"
_EPITHET = re.compile(r"^×?[a-zà-öø-ÿ][a-zà-öø-ÿ\-]*$")
_UNINOMIAL = re.compile(r"^×?[A-Za-zÀ-ÖØ-öø-ÿ][A-Za-zÀ-ÖØ-öø-ÿ\-]*$")


def normalise_text(text: object) -> str:
    """NFC-normalise and collapse whitespace; None and NaN become the empty string."""
    if text is None or (isinstance(text, float) and text != text):
        return ""
    return " ".join(unicodedata.normalize("NFC", str(text)).split())


def _normalise_hybrid_signs(tokens: list[str]) -> list[str]:
    """Write every hybrid sign as `×` glued to the name after it (`x piperita` -> `×piperita`)."""
    out: list[str] = []
    glue = False
    for i, tok in enumerate(tokens):
        if tok in (_HYBRID, "x", "X") and i + 1 < len(tokens):
            glue = True
            continue
        out.append(_HYBRID + tok.lstrip(_HYBRID) if glue else tok)
        glue = False
    return out


def _uninomial(token: str) -> str:
    """One name token capitalised (after any hybrid sign), or '' when not name-like."""
    if not _UNINOMIAL.match(token):
        return ""
    sign, body = (_HYBRID, token[1:]) if token.startswith(_HYBRID) else ("", token)
    return sign + body[:1].upper() + body[1:].lower()


@dataclass(frozen=True, slots=True)
class ScientificName:
    """A parsed scientific name: genus, epithet and infraspecific epithet (any may be '')."""

    genus: str
    epithet: str = ""
    infraspecific: str = ""

    def __str__(self) -> str:
        return " ".join(p for p in (self.genus, self.epithet) if p)


def parse_scientific_name(text: object) -> ScientificName:
    """Split `Genus epithet [marker infraspecific] [Author, year]` into its parts.

    A uninomial (`Corvidae`, `Pica`) returns only the genus field filled with that name;
    callers decide its rank. Returns an empty name when nothing name-like is left.
    """
    text = normalise_text(text)
    if text.isupper() or text.islower():
        text = text.lower()  # uniform case carries no information: read it as sentence case
    tokens = _normalise_hybrid_signs(text.replace("(", " (").split())
    genus = _uninomial(tokens[0]) if tokens else ""
    if not genus:
        return ScientificName("")
    epithets: list[str] = []
    for tok in tokens[1:]:
        low = tok.lower()
        if low in _INFRA_MARKERS:
            continue
        if low in _OPEN_NOMENCLATURE:
            break
        if low in _AUTHOR_PARTICLES or not _EPITHET.match(tok):
            break  # an author, a year, a parenthesis: the rest is citation
        epithets.append(tok)
        if len(epithets) == 2:
            break
    return ScientificName(genus, *(epithets + ["", ""])[:2])


def clean_epithet(species_field: object, genus: str = "") -> str:
    """The bare epithet from a catalog's species column.

    Handles a genus repeated in the field (`Pica hudsonia` with genus `Pica`), a whole
    binomial with authors, infraspecific markers and case.
    """
    text = normalise_text(species_field)
    if not text:
        return ""
    tokens = text.split()
    genus_key = normalise_text(genus).lower().lstrip(_HYBRID)
    first_key = tokens[0].lower().lstrip(_HYBRID)
    is_binomial = len(tokens) > 1 and (
        (genus_key and first_key == genus_key) or (tokens[0][:1].isupper() and _EPITHET.match(tokens[1]))
    )
    if is_binomial:
        return parse_scientific_name(text).epithet
    # Epithet first (maybe miscapitalised): parse behind a placeholder genus so that
    # authors and markers go.
    tokens[0] = tokens[0].lower()
    return parse_scientific_name("Placeholder " + " ".join(tokens)).epithet


def clean_uninomial(text: object) -> str:
    """A higher-rank name (kingdom..genus): authors dropped, capitalised, or '' if invalid."""
    tokens = _normalise_hybrid_signs(normalise_text(text).split())
    return _uninomial(tokens[0]) if tokens else ""


def clean_kingdom(text: object) -> str:
    """A kingdom name cleaned like any uninomial, synonyms mapped (`Metazoa` -> `Animalia`)."""
    name = clean_uninomial(text)
    return KINGDOM_SYNONYMS.get(name, name)


def clean_common_name(text: object) -> str:
    """A common name: NFC, whitespace collapsed, case kept as written (proper nouns
    such as `Bewick's wren` matter); typographic apostrophes become plain ones."""
    return normalise_text(text).replace("\u2019", "'").replace("\u02bc", "'")
