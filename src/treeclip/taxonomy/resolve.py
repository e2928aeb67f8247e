"""Resolve catalog rows with partial names against the offline NCBI reference.

A row may carry any of the 7 rank columns, a `scientific_name` or `taxonomic_name`
column, and a common name (`common`, `common_name`, `vernacular_name` or `vernacular`:
`COMMON_COLUMNS`). Each row gets:

- its ranks cleaned (authors, markers, case) and the missing ones filled from NCBI;
  ranks the row has are kept unless `overwrite=True`; disagreements are reported;
- a `status`: `resolved` (found, nothing to fill), `filled` (ranks or the common name
  filled), `conflict` (a given rank disagrees with NCBI), `ambiguous` (a homonym that the
  row's higher ranks cannot settle; the row is left as it was) or `unknown` (no name of
  the row is in NCBI, or there is no usable name);
- a one-line `reason` saying what was filled, what conflicts, or why it failed.

The lookup starts at the row's lowest name (`Genus epithet` when both are there) and
climbs: a species missing from NCBI is placed by its genus, and so on. Each distinct
combination of names is resolved once, so a million rows cost one lookup per distinct
name (see benchmarks/taxonomy_resolve.py).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterable

from treeclip.errors import TreeclipError
from treeclip.log import progress_bar
from treeclip.taxonomy.catalogs import read_catalog_table, write_catalog_table
from treeclip.taxonomy.names import (
    clean_common_name,
    clean_epithet,
    clean_kingdom,
    clean_uninomial,
    normalise_text,
    parse_scientific_name,
)
from treeclip.taxonomy.taxon import COMMON_COLUMNS, RANKS

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from treeclip.taxonomy.ncbi import NcbiReference

STATUSES: tuple[str, ...] = ("resolved", "filled", "conflict", "ambiguous", "unknown")
NAME_COLUMNS: tuple[str, ...] = RANKS + ("scientific_name", "taxonomic_name")
_ALIASES = {**{c: "common" for c in COMMON_COLUMNS[1:]}, "scientificname": "scientific_name",
            "taxonomicname": "taxonomic_name"}
_RANK_INDEX = {r: i for i, r in enumerate(RANKS)}

__all__ = ["STATUSES", "NAME_COLUMNS", "resolve_table", "problem_rows",
           "read_catalog_table", "write_catalog_table"]  # the catalog files: treeclip.taxonomy.catalogs

# One distinct row key: the 7 cleaned ranks + a name of unknown rank.
Key = tuple[str, ...]


# -- column handling ----------------------------------------------------------------------
def _column_map(columns: Iterable[str]) -> dict[str, str]:
    """Canonical name (`genus`, `common`, ...) -> the table's column name."""
    out: dict[str, str] = {}
    for col in columns:
        key = str(col).strip().lower().replace(" ", "_")
        key = _ALIASES.get(key, key)
        if key in NAME_COLUMNS + ("common",) and key not in out:
            out[key] = col
    return out


def _strings(values: Any) -> "Any":
    """A numpy object array of str ('' for null) from an Arrow column or pandas Series."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, (pa.ChunkedArray, pa.Array)):
        if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
            values = pc.cast(values, pa.string())
        values = pc.fill_null(values, "").to_numpy(zero_copy_only=False)
    else:
        values = values.astype(object).where(values.notna(), "").to_numpy()
    return np.asarray(values, dtype=object)


def _map_distinct(fn: Callable[..., str], *columns: Any) -> "Any":
    """Apply `fn` once per distinct tuple of values across `columns`."""
    import numpy as np
    import pandas as pd

    if len(columns[0]) == 0:
        return np.array([], dtype=object)
    if len(columns) == 1:
        codes, uniques = pd.factorize(columns[0])
        uniques = [(u,) for u in uniques]
    else:
        codes, uniques = pd.MultiIndex.from_arrays(columns).factorize()
    mapped = np.empty(len(uniques), dtype=object)
    for i, args in enumerate(uniques):  # element by element: results may be tuples
        mapped[i] = fn(*args)
    return mapped[codes]


# -- one distinct row ---------------------------------------------------------------------
def _queries(ranks: Key, free: str) -> list[tuple[str, str | None]]:
    """Names to try, lowest first: (name, rank or None when the rank is not known)."""
    out: list[tuple[str, str | None]] = []
    if free:
        out.append((free, None))
    genus, species = ranks[5], ranks[6]
    if genus and species:
        out.append((f"{genus} {species}", "species"))
    for i in range(5, -1, -1):
        if ranks[i]:
            out.append((ranks[i], RANKS[i]))
    return out


def _resolve_key(ref: "NcbiReference", key: Key, overwrite: bool) -> tuple[Key, str, str, str, bool]:
    """(ranks out, status, reason, common name from NCBI, whether the row was placed by a
    higher name than its lowest) for one distinct row."""
    ranks, free = key[:-1], key[-1]
    if ranks[6] and not ranks[5]:
        return ranks, "unknown", f"species epithet {ranks[6]!r} without a genus", "", False
    queries = _queries(ranks, free)
    if not queries:
        return ranks, "unknown", "no name in row", "", False
    first_failure = ""
    for name, rank in queries:
        stop = _RANK_INDEX[rank] if rank else len(RANKS)
        above = {RANKS[i]: ranks[i] for i in range(stop) if ranks[i]}
        result = ref.lookup_one(name, above, rank=rank)
        if result.status == "ambiguous":
            return ranks, "ambiguous", result.reason, "", False
        if result.status == "resolved":
            break
        first_failure = first_failure or result.reason
    else:
        return ranks, "unknown", first_failure, "", False

    from treeclip.taxonomy.ncbi import names_agree

    found = result.taxon
    out = list(ranks)
    filled, conflicts, notes = [], [], []
    for i, rank_name in enumerate(RANKS):
        mine, theirs = ranks[i], found.lineage[i]
        if not theirs:
            continue
        if not mine:
            out[i] = theirs
            filled.append(rank_name)
        elif not names_agree(rank_name, mine, theirs):
            conflicts.append(f"{rank_name} {mine} but NCBI {theirs}")
            if overwrite:
                out[i] = theirs
        elif overwrite:
            out[i] = theirs
    if first_failure:
        notes.append(f"{first_failure}; placed by {result.query}")
    if result.reason:
        notes.append(result.reason)
    if conflicts:
        notes.insert(0, "; ".join(conflicts) + (" (NCBI's names written)" if overwrite else " (row's names kept)"))
    if filled:
        notes.append("filled " + ", ".join(filled))
    status = "conflict" if conflicts else "filled" if filled else "resolved"
    # NCBI's common name belongs to the matched node: use it only if that is the row's taxon.
    lowest = max((i for i, n in enumerate(out) if n), default=-1)
    common = found.common if found.lowest_rank == (RANKS[lowest] if lowest >= 0 else None) else ""
    return tuple(out), status, "; ".join(notes), common, bool(first_failure)


# -- the table ----------------------------------------------------------------------------
def _clean_names(get: Callable[[str], Any], n: int) -> tuple[list[Any], Any, list[Any]]:
    """Cleaned rank columns, the free (unknown-rank) name column, and per-rank lists of
    rows whose given name was not name-like (for the reason column)."""
    import numpy as np

    empty = np.full(n, "", dtype=object)
    raw = {c: get(c) for c in NAME_COLUMNS}
    raw = {c: (v if v is not None else empty) for c, v in raw.items()}
    cleaned = [_map_distinct(clean_kingdom, raw["kingdom"])]
    cleaned += [_map_distinct(clean_uninomial, raw[r]) for r in RANKS[1:6]]
    cleaned.append(_map_distinct(clean_epithet, raw["species"], cleaned[5]))
    junk = [np.flatnonzero((raw[r] != "") & (cleaned[i] == "")) for i, r in enumerate(RANKS)]

    def from_scientific(text: str) -> tuple[str, str, str]:
        name = parse_scientific_name(text)
        return (name.genus, name.epithet, "") if name.epithet else ("", "", name.genus)

    def from_taxonomic(text: str) -> tuple[str, ...]:
        tokens = normalise_text(text).split()
        if len(tokens) == len(RANKS) and tokens[-1].islower():
            return tuple(tokens[:-1]) + (tokens[-1], "")
        if len(tokens) >= 2 and tokens[-1].islower():
            return ("",) * 5 + (tokens[-2], tokens[-1], "")
        return ("",) * 7 + (tokens[-1] if tokens else "",)

    free = empty.copy()
    for column, parse in (("scientific_name", from_scientific), ("taxonomic_name", from_taxonomic)):
        if not (raw[column] != "").any():
            continue
        parsed = _map_distinct(parse, raw[column])
        width = len(parsed[0]) if len(parsed) else 0
        parts = [np.array([p[j] for p in parsed], dtype=object) for j in range(width)]
        targets = list(range(7 - (width - 1), 7))  # the rank indices the parts fill
        values = []
        for j, ri in enumerate(targets):
            value = _map_distinct(clean_kingdom if ri == 0 else clean_epithet if ri == 6 else clean_uninomial, parts[j])
            values.append(value)
            use = (cleaned[ri] == "") & (value != "")
            if ri == 6:  # an epithet only belongs with the genus it came with
                use &= cleaned[5] == values[j - 1]
            cleaned[ri] = np.where(use, value, cleaned[ri])
        fill_free = (free == "") & (parts[-1] != "") & np.all([c == "" for c in cleaned], axis=0)
        free = np.where(fill_free, _map_distinct(clean_uninomial, parts[-1]), free)
    return cleaned, free, junk


def _resolve_rows(ref: "NcbiReference", cleaned: list[Any], free: Any, overwrite: bool,
                  progress: bool) -> tuple[dict[str, Any], int]:
    """Resolve each distinct row key (cleaned ranks + free name) once; returns per-row
    arrays (`ranks`: one per rank, `status`, `reason`, NCBI's `common` name,
    `placed_above`) and the number of distinct keys."""
    import numpy as np
    import pandas as pd

    if len(free):
        codes, keys = pd.MultiIndex.from_arrays(cleaned + [free]).factorize()
        keys = list(keys)
    else:
        codes, keys = np.array([], dtype=np.int64), []
    results = [_resolve_key(ref, tuple(k), overwrite)
               for k in progress_bar(len(keys), iterable=keys, desc="resolving names", unit="name",
                                     enabled=progress, mininterval=1.0)]
    rows = {
        "ranks": [np.array([r[0][i] for r in results], dtype=object)[codes] for i in range(len(RANKS))],
        "status": np.array([r[1] for r in results], dtype=object)[codes],
        "reason": np.array([r[2] for r in results], dtype=object)[codes],
        "common": np.array([r[3] for r in results], dtype=object)[codes],
        "placed_above": np.array([r[4] for r in results], dtype=bool)[codes] if results else np.zeros(0, dtype=bool),
    }
    return rows, len(keys)


def _merge_common(common_in: Any, ncbi_common: Any, status: Any, reason: Any) -> tuple[Any, Any]:
    """Common names: the row's wins; NCBI's fills a gap (not for failed rows), which
    makes a `resolved` row `filled`. Returns (common names, status); notes go in `reason`."""
    import numpy as np

    fill_common = (common_in == "") & (ncbi_common != "") & np.isin(status, ["resolved", "filled", "conflict"])
    common_out = np.where(fill_common, ncbi_common, common_in)
    newly = fill_common & (status == "resolved")
    status = np.where(newly, "filled", status)
    reason[fill_common] = _join(reason[fill_common], "filled common name")
    return common_out, status


def resolve_table(table: "pa.Table | pd.DataFrame", reference: "NcbiReference | None" = None, *,
                  overwrite: bool = False, progress: bool = False) -> tuple["pa.Table | pd.DataFrame", dict]:
    """Resolve every row of a catalog; returns (the table with ranks, `common`, `status`
    and `reason` columns, a summary dict with counts per status).

    The result has the input's type (Arrow table or pandas DataFrame); other columns pass
    through unchanged. Raises TreeclipError when the table has no name column.
    """
    import numpy as np
    import pyarrow as pa

    from treeclip.taxonomy.ncbi import default_reference

    start = time.perf_counter()
    is_arrow = isinstance(table, pa.Table)
    columns = table.column_names if is_arrow else list(table.columns)
    found = _column_map(columns)
    if not any(c in found for c in NAME_COLUMNS):
        raise TreeclipError("no name columns: expected some of " + ", ".join(NAME_COLUMNS)
                            + "; found: " + (", ".join(map(str, columns)) or "none"))
    ref = reference or default_reference()
    n = table.num_rows if is_arrow else len(table)

    def get(canonical: str):
        return _strings(table[found[canonical]]) if canonical in found else None

    cleaned, free, junk = _clean_names(get, n)
    common_in = _map_distinct(clean_common_name, get("common")) if "common" in found else np.full(n, "", dtype=object)
    rows, n_keys = _resolve_rows(ref, cleaned, free, overwrite, progress)
    out_ranks, status, reason = rows["ranks"], rows["status"], rows["reason"]
    common_out, status = _merge_common(common_in, rows["common"], status, reason)
    for i, bad in enumerate(junk):  # say which given names were dropped as not name-like
        if len(bad):
            raw = get(RANKS[i])
            notes = np.array([f"{RANKS[i]} {v!r} is not a name" for v in raw[bad]], dtype=object)
            reason[bad] = _join(notes, reason[bad])

    new_columns = {RANKS[i]: out_ranks[i] for i in range(len(RANKS))}
    new_columns.update(common=common_out, status=status, reason=reason)
    resolved = _assemble(table, is_arrow, found, new_columns)

    counts = Counter(status.tolist())
    summary = {"rows": n, "distinct_names": n_keys, **{s: counts.get(s, 0) for s in STATUSES},
               "placed_above_lowest_name": int(rows["placed_above"].sum()),
               "overwrite": overwrite, "seconds": round(time.perf_counter() - start, 3)}
    return resolved, summary


def _join(left: Any, right: Any) -> Any:
    """Element-wise `left; right` (arrays or one string each), skipping empty sides."""
    import numpy as np

    left, right = np.broadcast_arrays(np.asarray(left, dtype=object), np.asarray(right, dtype=object))
    out = np.empty(left.shape, dtype=object)
    for i, (a, b) in enumerate(zip(left, right)):
        out[i] = f"{a}; {b}" if a and b else a or b
    return out


def _assemble(table: Any, is_arrow: bool, found: dict[str, str], new: dict[str, Any]) -> Any:
    """The input's other columns in their order, then the 7 ranks, `common`, `status`
    and `reason` (replacing the input's rank and common-name columns)."""
    import pyarrow as pa

    replaced = {found[c] for c in RANKS + ("common",) if c in found}
    names = table.column_names if is_arrow else list(table.columns)
    kept = [c for c in names if c not in replaced and c not in new]
    if is_arrow:
        arrays = [table[c] for c in kept] + [pa.array(v.tolist(), type=pa.string()) for v in new.values()]
        return pa.table(arrays, names=kept + list(new))
    frame = table[kept].copy()
    for name, values in new.items():
        frame[name] = values
    return frame


def problem_rows(resolved: "pa.Table | pd.DataFrame", statuses: Iterable[str] = ("unknown", "ambiguous", "conflict"),
                 limit: int = 20) -> list[tuple[int, str, str]]:
    """The first `limit` (row index, status, reason) with one of `statuses`, for reports."""
    import numpy as np

    status = _strings(resolved["status"])
    reason = _strings(resolved["reason"])
    rows = np.flatnonzero(np.isin(status, list(statuses)))[:limit]
    return [(int(i), status[i], reason[i]) for i in rows]
