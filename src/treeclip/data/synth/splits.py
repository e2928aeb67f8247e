"""Which species are generated, and which are held out of training: whole families by
kingdom in turn, then unseen genera and unseen species chosen so that every held-out name
is made of parts seen in other combinations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from treeclip.data.synth.config import SynthConfig
from treeclip.data.synth_names import TABLE_PATH, read_table
from treeclip.taxonomy.taxon import Taxon

ROLES = ("seen", "unseen", "unseen_genus")


@dataclass(frozen=True)
class Species:
    """A species of the shipped table: its taxon, its epithet's meaning, its NCBI id."""

    taxon: Taxon
    meaning: str
    ncbi_taxid: int


def load_species(table: str | Path = TABLE_PATH) -> list[Species]:
    """The shipped species table as Species (NCBI taxid, Taxon, epithet meaning)."""
    return [Species(taxon, meaning, taxid) for taxid, taxon, meaning in read_table(table)]


def select_species(pool: Sequence[Species], n: int, rng: np.random.Generator) -> list[Species]:
    """`n` species (all if n is 0 or more than the pool), taken whole family by whole family,
    the kingdoms in turn, so even a small selection spans kingdoms and keeps relatives."""
    if n <= 0 or n >= len(pool):
        return list(pool)
    by_kingdom: dict[str, dict[str, list[Species]]] = {}
    for sp in pool:
        by_kingdom.setdefault(sp.taxon.kingdom, {}).setdefault(sp.taxon.family, []).append(sp)
    queues = []
    for kingdom in sorted(by_kingdom):
        families = sorted(by_kingdom[kingdom])
        queues.append([by_kingdom[kingdom][families[i]] for i in rng.permutation(len(families))])
    chosen: list[Species] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.extend(q.pop(0)[: n - len(chosen)])
    return chosen


def assign_roles(species: Sequence[Species], cfg: SynthConfig, rng: np.random.Generator) -> dict[Taxon, str]:
    """Each species' role: `seen`, `unseen` or `unseen_genus`.

    Unseen genera are whole genera held out from families that keep another genus in
    training. Unseen species are held out only while their genus keeps a training species
    and their exact epithet is carried by a training species of another genus, so their
    name is made of parts seen in other combinations.
    """
    role = {sp.taxon: "seen" for sp in species}
    _hold_out_genera(species, role, round(cfg.unseen_genus_fraction * len(species)), rng)
    _hold_out_species(species, role, round(cfg.unseen_fraction * len(species)), rng)
    return role


def _hold_out_genera(species: Sequence[Species], role: dict[Taxon, str], target: int,
                     rng: np.random.Generator) -> None:
    genera: dict[tuple, list[Species]] = {}
    for sp in species:
        genera.setdefault(sp.taxon.lineage[:6], []).append(sp)
    family_genera: dict[tuple, int] = {}
    for g in genera:
        family_genera[g[:5]] = family_genera.get(g[:5], 0) + 1
    held = 0
    order = sorted(genera)
    for i in rng.permutation(len(order)):
        g = order[i]
        if held >= target:
            break
        if family_genera[g[:5]] >= 2 and held + len(genera[g]) <= max(target, 1) * 1.5:
            family_genera[g[:5]] -= 1
            for sp in genera[g]:
                role[sp.taxon] = "unseen_genus"
            held += len(genera[g])


def _hold_out_species(species: Sequence[Species], role: dict[Taxon, str], target: int,
                      rng: np.random.Generator) -> None:
    seen = [sp for sp in species if role[sp.taxon] == "seen"]
    per_genus: dict[tuple, int] = {}  # genera keyed by lineage: a genus name can be a homonym
    per_epithet: dict[str, set[tuple]] = {}
    for sp in seen:
        g = sp.taxon.lineage[:6]
        per_genus[g] = per_genus.get(g, 0) + 1
        per_epithet.setdefault(sp.taxon.species, set()).add(g)
    held = 0
    for i in rng.permutation(len(seen)):
        if held >= target:
            break
        sp = seen[i]
        g, e = sp.taxon.lineage[:6], sp.taxon.species
        if per_genus[g] >= 2 and len(per_epithet[e] - {g}) >= 1:
            role[sp.taxon] = "unseen"
            per_genus[g] -= 1
            per_epithet[e].discard(g)
            held += 1
