"""Resolve a large catalog of real NCBI species with partial names, against a per-row baseline.

Catalog: species enumerated from NCBI (birds, insects, flowering plants, fungi), each row
keeping only part of its lineage (genus+species, a full lineage with one rank blanked,
only the family, or a scientific name with author), sampled with replacement to N rows.

- treeclip: `resolve_table` (cleans each distinct value once, resolves each distinct
  name combination once).
- baseline: the obvious loop, one row at a time (`DataFrame.apply`), each row cleaned and
  looked up by itself with a fresh reference (no lookup cache shared across rows),
  timed on a sample and reported per row.

Usage: .venv/bin/python benchmarks/taxonomy_resolve.py [--rows 1000000] [--baseline-rows 5000]
"""

from __future__ import annotations

import argparse
import random
import time

import pandas as pd

from treeclip.taxonomy import RANKS
from treeclip.taxonomy.ncbi import NcbiReference, default_reference
from treeclip.taxonomy.resolve import _resolve_key, resolve_table
from treeclip.taxonomy.names import clean_epithet, clean_kingdom, clean_uninomial

CLADES = [("Aves", 12000), ("Insecta", 20000), ("Magnoliopsida", 10000), ("Fungi", 5000)]


def species_pool(ref: NcbiReference) -> list:
    pool = []
    for clade, limit in CLADES:
        pool += list(ref.species_in(clade, limit=limit))
    return pool


def make_catalog(pool: list, n: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        t = rng.choice(pool)
        row = dict.fromkeys(RANKS + ("scientific_name",), "")
        kind = rng.random()
        if kind < 0.4:
            row["genus"], row["species"] = t.genus, t.species
        elif kind < 0.7:
            row.update(zip(RANKS, t.lineage))
            row[RANKS[rng.randrange(5)]] = ""
        elif kind < 0.85:
            row["family"] = t.family
        else:
            row["scientific_name"] = f"{t.scientific_name} Linnaeus, 1758"
        rows.append(row)
    return pd.DataFrame(rows)


def baseline_row(row: pd.Series) -> str:
    """One row, on its own: clean, look up with a reference that has not seen it."""
    ref = baseline_row.ref
    ref.matches.cache_clear()
    ranks = [clean_kingdom(row["kingdom"])] + [clean_uninomial(row[r]) for r in RANKS[1:6]]
    ranks.append(clean_epithet(row["species"], ranks[5]))
    free = ""
    if row["scientific_name"]:
        from treeclip.taxonomy.names import parse_scientific_name

        name = parse_scientific_name(row["scientific_name"])
        ranks[5], ranks[6] = name.genus, name.epithet
    return _resolve_key(ref, tuple(ranks) + (free,), False)[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=5000)
    args = parser.parse_args()

    ref = default_reference()
    t0 = time.perf_counter()
    pool = species_pool(ref)
    print(f"species pool: {len(pool)} NCBI species in {time.perf_counter() - t0:.1f} s")
    catalog = make_catalog(pool, args.rows)
    sample = catalog.sample(args.baseline_rows, random_state=0)

    # Fresh caches for a fair first run: the treeclip path pays its own lookups.
    ref.matches.cache_clear()
    ref._placement.cache_clear()
    t0 = time.perf_counter()
    out, summary = resolve_table(catalog, ref)
    fast = time.perf_counter() - t0
    print(f"treeclip resolve_table: {args.rows} rows in {fast:.1f} s "
          f"({args.rows / fast:,.0f} rows/s); {summary}")

    baseline_row.ref = NcbiReference()
    t0 = time.perf_counter()
    statuses = sample.apply(baseline_row, axis=1)
    slow = time.perf_counter() - t0
    per_row_slow = slow / len(sample)
    print(f"baseline per-row apply: {len(sample)} rows in {slow:.1f} s ({1 / per_row_slow:,.0f} rows/s); "
          f"{statuses.value_counts().to_dict()}")
    print(f"speed-up: {per_row_slow * args.rows / fast:.1f}x "
          f"(baseline extrapolated to {args.rows} rows: {per_row_slow * args.rows / 60:.1f} min)")


if __name__ == "__main__":
    main()
