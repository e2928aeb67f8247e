"""How NCBI's names map to BioCLIP's 7 ranks: the kingdom and plant-rank rules, hybrid
signs, qualified homonyms, name agreement, and the result types of a lookup (the
decisions are listed in `treeclip.taxonomy.ncbi` and docs/taxonomy.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from treeclip.taxonomy.names import KINGDOM_SYNONYMS, normalise_text
from treeclip.taxonomy.taxon import RANKS, Taxon

KINGDOMS = {"Metazoa": "Animalia", "Viridiplantae": "Plantae", "Fungi": "Fungi"}
PROKARYOTE_OR_VIRUS = {"Bacteria", "Archaea", "Viruses"}
PLANT_PHYLA = {"Tracheophyta", "Bryophyta", "Marchantiophyta", "Anthocerotophyta"}
MONOCOT_CLASS = "Liliopsida"
# Names that mean the same group under NCBI's and GBIF's plant ranks: not a conflict.
_EQUIVALENT = {
    ("phylum", "streptophyta"): {p.lower() for p in PLANT_PHYLA},
    ("class", "magnoliopsida"): {"liliopsida"},
}
# A species name fit for a training label: a binomial, no `sp.`, strain codes or digits.
CLEAN_BINOMIAL = re.compile(r"^(x )?[A-Z][a-z]+(-[a-z]+)? (x )?[a-z][a-z\-]+$")
# NCBI makes a few homonyms unique with a qualifier: `Crambe (in: sponges)`,
# `Bacteria Latreille et al. 1825` (the stick insect). The plain name is group 1.
QUALIFIED = re.compile(r"^((?:x )?[A-Z][a-z\-]+) (\((?:in|ex)\b.*\)|[A-Z][a-z]+ et al\. [12]\d{3})$")
HIGHER = ("kingdom", "phylum", "class", "order", "family", "genus")
"""The ranks above species: their NCBI names lose a qualifier (`plain_name`)."""


def plain_name(name: str) -> str:
    """A higher-rank NCBI name without its disambiguating qualifier, hybrid sign as `×`."""
    qualified = QUALIFIED.match(name) if " " in name else None
    return from_ncbi_hybrid(qualified.group(1) if qualified else name)


# Slots of a raw placement: the 7 ranks plus what the final mapping needs.
SLOTS = RANKS + ("superkingdom", "plant_phylum", "monocot_class")
SLOT = {s: i for i, s in enumerate(SLOTS)}


def names_agree(rank: str, a: str, b: str) -> bool:
    """Whether two names at `rank` denote the same group: case-insensitive, kingdom
    synonyms mapped, and NCBI's plant phylum/class accepted for GBIF's."""
    a, b = a.strip().lower(), b.strip().lower()
    if rank == "kingdom":
        syn = {k.lower(): v.lower() for k, v in KINGDOM_SYNONYMS.items()}
        a, b = syn.get(a, a), syn.get(b, b)
    if a == b:
        return True
    return b in _EQUIVALENT.get((rank, a), ()) or a in _EQUIVALENT.get((rank, b), ())


def from_ncbi_hybrid(name: str) -> str:
    """NCBI writes hybrids `Mentha x piperita`, `x Triticosecale`; we write `×`."""
    return re.sub(r"(^| )x ", r"\1×", name) if "x " in name else name


def to_ncbi_hybrid(name: str) -> str:
    return re.sub(r"(^| )×", r"\1x ", name)


@dataclass(frozen=True, slots=True)
class NcbiMatch:
    """One NCBI taxon a name matched."""

    tax_id: int
    name: str
    """NCBI's scientific name of the node (hybrid sign written `×`)."""
    ncbi_rank: str
    """The node's NCBI rank (`species`, `genus`, `subfamily`, `clade`, ...)."""
    taxon: Taxon
    """Its 7-rank placement: ranks down to the node (or its lowest ranked ancestor)."""

    @property
    def rank(self) -> str | None:
        """Which of the 7 ranks this node itself fills, or None (a subfamily, a clade...)."""
        low = self.taxon.lowest_rank
        if low is None:
            return None
        own = self.taxon.scientific_name if low == "species" else self.taxon[low]
        return low if own.lower() == self.name.lower() else None


@dataclass(frozen=True, slots=True)
class LookupResult:
    """The outcome of looking up one name: `status` is resolved, ambiguous or unknown."""

    query: str
    status: str
    reason: str = ""
    match: NcbiMatch | None = None
    candidates: tuple[NcbiMatch, ...] = field(default=())

    @property
    def taxon(self) -> Taxon | None:
        return self.match.taxon if self.match else None


def context_ranks(context: Taxon | Mapping[str, str] | None) -> dict[str, str]:
    if context is None:
        return {}
    if isinstance(context, Taxon):
        return {r: n for r, n in zip(RANKS, context.lineage) if n}
    return {r: normalise_text(context.get(r)) for r in RANKS if normalise_text(context.get(r))}


def agreement(taxon: Taxon, ranks: Mapping[str, str]) -> tuple[int, int]:
    """(agreeing, disagreeing) ranks between a candidate and the given ranks."""
    agree = disagree = 0
    for rank, name in ranks.items():
        ref = taxon[rank]
        if ref and name:
            if names_agree(rank, ref, name):
                agree += 1
            else:
                disagree += 1
    return agree, disagree
