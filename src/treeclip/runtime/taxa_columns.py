"""Taxa as columns: for each rank and the common name, a sorted vocabulary of names and
one int32 code per taxon. A million taxa fit in a few dozen MB this way, where a million
`Taxon` objects take seconds to build and hundreds of MB to hold.

Vocabularies are sorted, so code order is name order: sorting taxa by their codes sorts
them by lineage exactly as sorting `Taxon.lineage` tuples does (`lineage_order`).
Names are normalised as `Taxon` normalises them (NFC, whitespace collapsed, ranks
capitalised, the epithet lower-case), so a taxon read from columns equals the `Taxon`
built from the same names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from treeclip.fsutil import atomic_path
from treeclip.taxonomy.names import normalise_text
from treeclip.taxonomy.taxon import RANKS, Taxon

COLUMNS: tuple[str, ...] = (*RANKS, "common")
"""The columns of a taxa table: the seven ranks, then the common name."""


def _normal_name(column: str) -> Callable[[object], str]:
    """How `Taxon` normalises a name of `column` (one definition: Taxon's own), with a
    shortcut for the names it leaves as they are: ASCII letters already in the rank's case
    (`Corvidae`, `hudsonia`), or ASCII common names with single spaces."""
    if column == "common":
        return lambda name: name if type(name) is str and name.isascii() and " ".join(name.split()) == name \
            else normalise_text(name)
    depth = RANKS.index(column)
    empty = ("",) * len(RANKS)
    clean = str.islower if column == "species" else (lambda n: n[:1].isupper() and (len(n) == 1 or n[1:].islower()))

    def normal(name: object) -> str:
        if type(name) is str and name.isascii() and name.isalpha() and clean(name):
            return name
        return Taxon(empty[:depth] + (normalise_text(name),) + empty[depth + 1:]).lineage[depth]

    return normal


def _factorize(values: Iterable, n: int) -> tuple[list, np.ndarray]:
    """Distinct values in first-seen order and each value's position among them."""
    index: dict = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), np.int32, n)
    return list(index), codes


def _sorted_vocabulary(values: Iterable, n: int, normalise: Callable | None) -> tuple[list[str], np.ndarray]:
    """(sorted distinct names, int32 code per value); `normalise` is applied once per
    distinct raw value, and values it makes equal share a code."""
    raw, codes = _factorize(values, n)
    clean = [normalise(v) for v in raw] if normalise else ["" if v is None else str(v) for v in raw]
    names = sorted(set(clean))
    position = {name: i for i, name in enumerate(names)}
    remap = np.fromiter((position[c] for c in clean), np.int32, len(clean))
    return names, remap[codes] if len(codes) else codes


@dataclass(frozen=True, eq=False)
class TaxaColumns:
    """`names[c]`: the sorted vocabulary of column c; `codes[c][i]`: taxon i's name in it."""

    names: Mapping[str, list[str]]
    codes: Mapping[str, np.ndarray]
    _cache: dict = field(default_factory=dict, repr=False)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_names(cls, columns: Mapping[str, Iterable], n: int, *, normalise: bool = True) -> "TaxaColumns":
        """Columns from `n` raw names per column (None = empty; a missing column is empty);
        `normalise` cleans them as `Taxon` would (off for names from `Taxon` objects)."""
        names, codes = {}, {}
        for c in COLUMNS:
            values = columns.get(c, ("" for _ in range(n)))
            names[c], codes[c] = _sorted_vocabulary(values, n, _normal_name(c) if normalise else None)
        return cls(names, codes)

    @classmethod
    def from_taxa(cls, taxa: Sequence[Taxon]) -> "TaxaColumns":
        """Columns of a list of taxa, in list order."""
        lineages = [t.lineage for t in taxa]
        columns: dict[str, Iterable] = {r: map(itemgetter(i), lineages) for i, r in enumerate(RANKS)}
        columns["common"] = (t.common for t in taxa)
        return cls.from_names(columns, len(taxa), normalise=False)

    # -- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.codes[RANKS[0]])

    def name(self, column: str, i: int) -> str:
        return self.names[column][self.codes[column][i]]

    def taxon(self, i: int) -> Taxon:
        """Taxon i as a `Taxon`."""
        return Taxon(tuple(self.name(r, i) for r in RANKS), self.name("common", i))

    def to_taxa(self) -> list[Taxon]:
        """Every taxon as a `Taxon` (slow for huge sets; for small ones and tests)."""
        return [self.taxon(i) for i in range(len(self))]

    def take(self, rows: np.ndarray) -> "TaxaColumns":
        """The taxa at `rows` (indices, in that order), sharing the vocabularies."""
        rows = np.asarray(rows, dtype=np.int64)
        return TaxaColumns(self.names, {c: self.codes[c][rows] for c in COLUMNS})

    def order_of(self, rows: np.ndarray) -> np.ndarray:
        """The lineage order of `take(rows)` for increasing `rows`, from this set's own order
        (linear time: no new sort)."""
        rows = np.asarray(rows, dtype=np.int64)
        position = np.full(len(self), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        kept = position[self.lineage_order()]
        return kept[kept >= 0]

    # -- order -----------------------------------------------------------------------
    def lineage_order(self) -> np.ndarray:
        """The stable permutation that sorts the taxa by lineage, then common name (computed
        once; `save` keeps it)."""
        if "order" not in self._cache:
            keys = [self.codes[c] for c in reversed(COLUMNS)]  # lexsort: the last key is primary
            self._cache["order"] = np.lexsort(keys).astype(np.int64) if len(self) else np.zeros(0, np.int64)
        return self._cache["order"]

    def is_sorted(self) -> bool:
        """Whether the taxa are in lineage order (ties in any order)."""
        n = len(self)
        if n < 2:
            return True
        undecided = np.ones(n - 1, dtype=bool)  # pairs equal on every rank so far
        for r in RANKS:
            a, b = self.codes[r][:-1], self.codes[r][1:]
            if (undecided & (a > b)).any():
                return False
            undecided &= a == b
        return True

    # -- matching names, case-insensitively (subsets) ----------------------------------------
    def lower_codes(self, column: str) -> tuple[np.ndarray, dict[str, int]]:
        """(per-taxon code of the lower-cased name, lower-cased name -> that code)."""
        if ("lower", column) not in self._cache:
            index: dict[str, int] = {}
            per_name = np.fromiter((index.setdefault(s.lower(), len(index)) for s in self.names[column]),
                                   np.int32, len(self.names[column]))
            self._cache["lower", column] = (per_name[self.codes[column]], index)
        return self._cache["lower", column]

    # -- storage (no pickles: codes as int32, names as one NUL-joined UTF-8 blob) -----------
    def save(self, path: str | Path, **extra: np.ndarray) -> None:
        """Write the columns, their lineage order (and `extra` arrays) to an `.npz` atomically."""
        arrays = {**extra, "lineage_order": self.lineage_order()}
        for c in COLUMNS:
            if any("\0" in s for s in self.names[c]):
                raise ValueError(f"a {c} name holds a NUL character")
            arrays[f"codes_{c}"] = self.codes[c]
            arrays[f"names_{c}"] = np.frombuffer("\0".join(self.names[c]).encode("utf-8"), dtype=np.uint8)
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> tuple["TaxaColumns", dict[str, np.ndarray]]:
        """(columns, the extra arrays) of a file `save` wrote; raises on a damaged file."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        names = {c: bytes(arrays.pop(f"names_{c}")).decode("utf-8").split("\0") for c in COLUMNS}
        codes = {c: arrays.pop(f"codes_{c}").astype(np.int32, copy=False) for c in COLUMNS}
        order = arrays.pop("lineage_order")
        n = len(codes[RANKS[0]])
        for c in COLUMNS:
            if len(codes[c]) != n or (n and (codes[c].min() < 0 or codes[c].max() >= len(names[c]))):
                raise ValueError(f"{path}: column {c} does not fit its names")
        if len(order) != n:
            raise ValueError(f"{path}: the lineage order does not fit the columns")
        return cls(names, codes, {"order": order.astype(np.int64, copy=False)}), arrays
