"""The taxa of source items: the names a source gives, cleaned, or resolved against the
offline NCBI reference (`treeclip.taxonomy.resolve.resolve_table`), once per distinct label."""

from __future__ import annotations

from treeclip.data.sources import SourceItem
from treeclip.data.tables import taxon_from_row
from treeclip.taxonomy.names import parse_scientific_name
from treeclip.taxonomy.taxon import RANKS, Taxon


def _as_given(ranks: dict[str, str], common: str, name: str) -> Taxon:
    """A taxon from the names a source gives, cleaned but not checked against NCBI."""
    r = dict(ranks)
    if name and not any(r.values()):
        parsed = parse_scientific_name(name)
        if parsed.epithet:
            r["genus"], r["species"] = parsed.genus, parsed.epithet
        elif parsed.genus:
            r["genus"] = parsed.genus
    return taxon_from_row({**r, "common": common})


def resolve_items(items: list[SourceItem], *, resolve: bool, keep_unresolved: bool,
                  reference=None) -> tuple[dict[tuple, Taxon | None], dict[tuple, str], dict]:
    """Taxon (or None: dropped) and a failure reason per distinct item label."""
    labels = sorted({it.label() for it in items})
    taxa: dict[tuple, Taxon | None] = {}
    reasons: dict[tuple, str] = {}
    given = {lab: _as_given(dict(lab[0]), lab[1], lab[2]) for lab in labels}
    summary: dict = {"distinct_names": len(labels)}
    if resolve and labels:
        import pyarrow as pa

        from treeclip.taxonomy.resolve import resolve_table

        cols = {r: [dict(lab[0]).get(r, "") for lab in labels] for r in RANKS}
        cols["scientific_name"] = [lab[2] for lab in labels]
        cols["common"] = [lab[1] for lab in labels]
        table, summary = resolve_table(pa.table(cols), reference, progress=True)
        out = table.to_pydict()
        for i, lab in enumerate(labels):
            status, reason = out["status"][i], out["reason"][i] or ""
            if status in ("resolved", "filled", "conflict"):
                taxa[lab] = Taxon.from_ranks({r: out[r][i] for r in RANKS}, out["common"][i] or "")
                if status == "conflict":
                    reasons[lab] = reason  # kept, but reported
            else:
                taxa[lab] = given[lab] if keep_unresolved else None
                reasons[lab] = f"{status}: {reason}" if reason else status
    else:
        taxa = dict(given)
    for lab, t in taxa.items():
        if t is not None and t.is_empty:
            taxa[lab] = None
            reasons[lab] = reasons.get(lab) or "no usable name"
    return taxa, reasons, summary
