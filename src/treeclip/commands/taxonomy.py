"""`treeclip taxonomy ...`: look up names in the offline NCBI taxonomy; resolve catalogs."""

from __future__ import annotations

import click

from treeclip.commands._lazy import LazyGroup

VERBS = {
    "lookup": ("taxonomy_lookup", "lookup", "Print the 7-rank lineage, common name and every text type of a name."),
    "resolve": ("taxonomy_resolve", "resolve", "Fill and check the ranks of a catalog (CSV/Parquet) against NCBI."),
}


@click.group(cls=LazyGroup, verbs=VERBS, package="treeclip.commands")
def taxonomy() -> None:
    """Taxonomy: names, lineages and the offline NCBI reference."""
