"""`treeclip taxonomy lookup NAME...`: lineage, common name and every text type of a name."""

from __future__ import annotations

import json
import sys

import click

_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def _parse_context(items: tuple[str, ...]) -> dict[str, str]:
    context: dict[str, str] = {}
    for item in items:
        rank, sep, name = item.partition("=")
        rank = rank.strip().lower()
        if not sep or rank not in _RANKS or not name.strip():
            raise click.BadParameter(f"{item!r}: expected RANK=NAME with RANK one of {', '.join(_RANKS)}",
                                     param_hint="--context")
        context[rank] = name.strip()
    return context


def _record(match) -> dict:
    """One NCBI match as plain data: ranks, names and every caption."""
    taxon = match.taxon
    return {
        "tax_id": match.tax_id, "ncbi_name": match.name, "ncbi_rank": match.ncbi_rank,
        "ranks": dict(zip(_RANKS, taxon.lineage)), "common": taxon.common,
        "names": {"taxonomic": taxon.taxonomic_name, "scientific": taxon.scientific_name,
                  "common": taxon.common_name, "tagged": taxon.tagged_name},
        "captions": taxon.captions(),
    }


def _print_match(match) -> None:
    taxon = match.taxon
    click.echo(f"{match.name}  (NCBI taxid {match.tax_id}, {match.ncbi_rank})")
    width = max(len(r) for r in _RANKS + ("common",))
    for rank, name in zip(_RANKS, taxon.lineage):
        click.echo(f"  {rank:<{width}}  {name or '-'}")
    click.echo(f"  {'common':<{width}}  {taxon.common or '- (falls back to ' + repr(taxon.common_name) + ')'}")
    click.echo("  text types:")
    captions = taxon.captions()
    tw = max(len(t) for t in captions)
    for text_type, caption in captions.items():
        click.echo(f"    {text_type:<{tw}}  {caption}")


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--context", "-c", multiple=True, metavar="RANK=NAME",
              help="A higher rank that chooses among homonyms, e.g. -c kingdom=Plantae (repeatable).")
@click.option("--rank", type=click.Choice(_RANKS), default=None,
              help="Only accept a taxon of this rank (e.g. a genus, not a family of that name).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per name (JSON Lines).")
def lookup(names: tuple[str, ...], context: tuple[str, ...], rank: str | None, as_json: bool) -> None:
    """Look up scientific NAMES in the offline NCBI taxonomy.

    Prints the BioCLIP 7-rank lineage, the common name and the caption of every text
    type. Authors, years, `ssp.`/`var.` and odd case are cleaned first. A homonym
    (`Morus`) lists every candidate; --context picks one. Exit code 1 when a name is
    unknown or stays ambiguous.

    Example: treeclip taxonomy lookup "Pica hudsonia"
    """
    from treeclip.taxonomy.ncbi import default_reference

    ctx = _parse_context(context)
    ref = default_reference()
    failed = 0
    for i, name in enumerate(names):
        result = ref.lookup_one(name, ctx or None, rank=rank)
        shown = (result.match,) if result.match else result.candidates if result.status == "ambiguous" else ()
        failed += result.status != "resolved"
        if as_json:
            click.echo(json.dumps({"query": name, "status": result.status, "reason": result.reason,
                                   "matches": [_record(m) for m in shown]}, ensure_ascii=False))
            continue
        if result.status != "resolved":
            click.echo(f"treeclip: {name or repr(name)}: {result.status}: {result.reason}", err=True)
        if i and shown:
            click.echo()
        for j, match in enumerate(shown):
            if j:
                click.echo()
            _print_match(match)
    if failed:
        sys.exit(1)
