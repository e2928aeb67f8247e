"""`treeclip taxonomy resolve IN -o OUT`: fill and check a catalog's ranks against NCBI."""

from __future__ import annotations

import sys
from pathlib import Path

import click

_STATUSES = ("resolved", "filled", "conflict", "ambiguous", "unknown")
_SHOW = 20


@click.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Resolved catalog: .parquet or .csv (written atomically).")
@click.option("--overwrite", is_flag=True,
              help="Write NCBI's names over the row's where they disagree (default: keep the row's, report).")
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the summary counts as JSON here.")
def resolve(source: Path, output: Path, overwrite: bool, summary_json: Path | None) -> None:
    """Resolve a catalog SOURCE (CSV, TSV or Parquet) against the offline NCBI taxonomy.

    Rows may carry any of kingdom..species, scientific_name, taxonomic_name and a common
    name (common or common_name). Missing ranks are filled, given ones kept (or replaced
    with --overwrite) and conflicts reported; each row gets `status` (resolved, filled,
    conflict, ambiguous, unknown) and `reason` columns. Exit code 1 when some rows stay
    unknown or ambiguous.

    Example: treeclip taxonomy resolve rows.csv -o resolved.parquet
    """
    from treeclip.errors import TreeclipError
    from treeclip.fsutil import write_json_atomic
    from treeclip.taxonomy.resolve import problem_rows, read_catalog_table, resolve_table, write_catalog_table

    if output.suffix.lower() not in (".parquet", ".pq", ".csv", ".tsv"):
        raise TreeclipError(f"{output}: unknown output format {output.suffix or '(none)'}; use .parquet or .csv")
    table = read_catalog_table(source)
    try:
        resolved, summary = resolve_table(table, overwrite=overwrite, progress=True)
    except TreeclipError as err:
        raise TreeclipError(f"{source}: {err}") from None
    write_catalog_table(resolved, output)
    if summary_json:
        write_json_atomic(summary_json, {"source": str(source), "output": str(output), **summary})

    problems = problem_rows(resolved, limit=_SHOW)
    for row, status, reason in problems:
        click.echo(f"{source}: row {row + 1}: {status}: {reason}", err=True)
    n_problems = sum(summary[s] for s in ("conflict", "ambiguous", "unknown"))
    if n_problems > len(problems):
        click.echo(f"{source}: ... and {n_problems - len(problems)} more (see the status and reason columns)",
                   err=True)
    click.echo(f"{source}: {summary['rows']} rows, {summary['distinct_names']} distinct names, "
               f"{summary['seconds']:.1f} s")
    for status in _STATUSES:
        click.echo(f"  {status:<10} {summary[status]}")
    if summary["placed_above_lowest_name"]:
        click.echo(f"  ({summary['placed_above_lowest_name']} rows placed by a higher rank: "
                   "their lowest name is not in NCBI)")
    click.echo(f"wrote {output}")
    if summary["unknown"] or summary["ambiguous"]:
        sys.exit(1)
