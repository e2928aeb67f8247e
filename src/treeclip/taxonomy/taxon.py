"""The 7-rank taxon and BioCLIP's name formats and training captions.

A `Taxon` is immutable and hashable, so it can key dictionaries and sets of taxa.
The species rank holds the epithet only (`hudsonia`), as in TreeOfLife-10M.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from treeclip.taxonomy.names import normalise_text

RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
"""The seven Linnaean ranks, highest first. `species` holds the epithet."""

TEXT_TYPES: tuple[str, ...] = ("com", "sci", "taxon", "sci_com", "taxon_com", "taxonTag", "taxonTag_com")
"""Every caption type a shard carries, as the `.txt` extension names it."""

MIXED_TEXT_TYPES: tuple[str, ...] = ("com", "sci", "taxon", "sci_com", "taxon_com")
"""The five text types BioCLIP mixes during training."""

COMMON_COLUMNS: tuple[str, ...] = ("common", "common_name", "vernacular_name", "vernacular")
"""Table columns that hold a taxon's common name (lower-cased), the first present wins;
`vernacular_name` is Darwin Core's (GBIF, iNat exports)."""


def rank_index(rank: str) -> int:
    """Position of `rank` in RANKS (0 = kingdom); a clear error for an unknown rank."""
    try:
        return RANKS.index(rank)
    except ValueError:
        raise ValueError(f"unknown rank {rank!r}; expected one of {', '.join(RANKS)}") from None


def _capitalise(name: str) -> str:
    # Uninomials (kingdom..genus) are capitalised; a leading hybrid sign stays in front.
    if name.startswith("×"):
        return "×" + _capitalise(name[1:])
    return name[:1].upper() + name[1:].lower()


@dataclass(frozen=True, slots=True)
class Taxon:
    """Seven ranks (empty string where unknown) plus an optional common name."""

    lineage: tuple[str, ...]
    common: str = ""

    def __post_init__(self) -> None:
        lineage = tuple(self.lineage)
        if len(lineage) != len(RANKS):
            raise ValueError(f"a taxon needs {len(RANKS)} ranks, got {len(lineage)}: {lineage!r}")
        cleaned = tuple(normalise_text(n) for n in lineage)  # also None/NaN -> ''
        cleaned = tuple(_capitalise(n) for n in cleaned[:-1]) + (cleaned[-1].lower(),)
        object.__setattr__(self, "lineage", cleaned)
        object.__setattr__(self, "common", normalise_text(self.common))

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_ranks(cls, ranks: Mapping[str, str | None], common: str | None = None) -> "Taxon":
        """Build from a mapping rank -> name (missing ranks are empty); `common` may be
        given in the mapping too (key `common`)."""
        names = tuple((ranks.get(r) or "") for r in RANKS)
        if common is None:
            common = ranks.get("common") or ""
        return cls(names, common or "")

    @classmethod
    def of(cls, *names: str, common: str = "") -> "Taxon":
        """Positional shorthand: `Taxon.of("Animalia", "Chordata", ..., common=...)`;
        fewer than seven names leave the lower ranks empty."""
        if len(names) > len(RANKS):
            raise ValueError(f"at most {len(RANKS)} ranks, got {len(names)}")
        return cls(tuple(names) + ("",) * (len(RANKS) - len(names)), common)

    def as_dict(self) -> dict[str, str]:
        """Rank -> name, plus `common`."""
        return {**dict(zip(RANKS, self.lineage)), "common": self.common}

    # -- ranks ----------------------------------------------------------------------
    def __getitem__(self, rank: str) -> str:
        return self.lineage[rank_index(rank)]

    kingdom = property(lambda self: self.lineage[0])
    phylum = property(lambda self: self.lineage[1])
    class_ = property(lambda self: self.lineage[2])
    order = property(lambda self: self.lineage[3])
    family = property(lambda self: self.lineage[4])
    genus = property(lambda self: self.lineage[5])
    species = property(lambda self: self.lineage[6])

    @property
    def lowest_rank(self) -> str | None:
        """The lowest rank with a name, or None for an empty taxon."""
        for rank, name in zip(reversed(RANKS), reversed(self.lineage)):
            if name:
                return rank
        return None

    @property
    def is_empty(self) -> bool:
        return not any(self.lineage)

    def at(self, rank: str) -> "Taxon":
        """The ancestor at `rank`: ranks below it emptied. The common name belongs to the
        species, so it is kept only when nothing is cut away."""
        i = rank_index(rank) + 1
        if all(not n for n in self.lineage[i:]):
            return self
        return Taxon(self.lineage[:i] + ("",) * (len(RANKS) - i), "")

    def lowest_common_rank(self, other: "Taxon") -> str | None:
        """The lowest rank at which both lineages still agree (and are named), or None
        when they differ already at the kingdom. An empty rank on both sides counts as
        agreement, so a gap in the middle does not end the shared lineage."""
        shared: str | None = None
        for rank, a, b in zip(RANKS, self.lineage, other.lineage):
            if a != b:
                break
            if a:
                shared = rank
        return shared

    # -- name formats (BIOCLIP-FACTS section 1) -------------------------------------
    @property
    def taxonomic_name(self) -> str:
        """`Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia`; empty ranks dropped."""
        return " ".join(n for n in self.lineage if n)

    @property
    def tagged_name(self) -> str:
        """`kingdom Animalia phylum Chordata ... species hudsonia`; empty ranks dropped."""
        return " ".join(f"{r} {n}" for r, n in zip(RANKS, self.lineage) if n)

    @property
    def scientific_name(self) -> str:
        """`Genus epithet`; without a genus, the name of the lowest named rank."""
        if self.genus:
            return f"{self.genus} {self.species}".strip()
        rank = self.lowest_rank
        return self[rank] if rank else ""

    @property
    def common_name(self) -> str:
        """The common name, else the scientific name, else the taxonomic name."""
        return self.common or self.scientific_name or self.taxonomic_name

    def name(self, text_type: str) -> str:
        """The name a caption of `text_type` wraps (before `a photo of ...`)."""
        if text_type == "com":
            return self.common_name
        if text_type == "sci":
            return self.scientific_name
        if text_type == "taxon":
            return self.taxonomic_name
        if text_type == "sci_com":
            return f"{self.scientific_name} with common name {self.common_name}"
        if text_type == "taxon_com":
            return f"{self.taxonomic_name} with common name {self.common_name}"
        if text_type == "taxonTag":
            return self.tagged_name
        if text_type == "taxonTag_com":
            return f"{self.tagged_name} with common name {self.common_name}"
        raise ValueError(f"unknown text type {text_type!r}; expected one of {', '.join(TEXT_TYPES)}")

    def caption(self, text_type: str) -> str:
        """The training caption: `a photo of {name}.`"""
        return f"a photo of {self.name(text_type)}."

    def captions(self, text_types: Iterable[str] = TEXT_TYPES) -> dict[str, str]:
        """Every caption, keyed by text type."""
        return {t: self.caption(t) for t in text_types}

    def __str__(self) -> str:
        return self.taxonomic_name
