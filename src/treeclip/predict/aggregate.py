"""Species probabilities summed to any rank, vectorised.

Taxa are kept sorted by lineage (kingdom first). In that order the taxa below any one
genus, family, order, ... sit side by side, so summing a rank is one `np.add.reduceat`
over contiguous column segments: no Python loop over images or taxa. A group is the
whole lineage down to the rank, so homonyms in two kingdoms stay apart, and a taxon with
an empty intermediate rank still counts (its group has an empty name at that rank).

The index works on the columnar form of the taxa (`TaxaColumns`: one int32 code per taxon
and rank), so building the groups of a rank is a few vectorised comparisons even for the
~867k taxa of a published label set, and a group's `Taxon` is only made when a row needs it.
A label set read from a file keeps its own column order (`any_order=True`): reordering
(batch x 867k) probabilities every batch costs more than summing them by group code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from treeclip.runtime.taxa_columns import TaxaColumns
from treeclip.taxonomy.taxon import RANKS, Taxon, rank_index


WIDE_ROWS = 100_000
"""Rows wider than this are ranked one at a time by `top_k`."""


def sort_taxa(taxa: Sequence[Taxon]) -> np.ndarray:
    """The permutation that sorts `taxa` by lineage (then common name): `taxa[order]`."""
    return TaxaColumns.from_taxa(taxa).lineage_order()


class GroupTaxa(Sequence[Taxon]):
    """The taxa naming the groups of one rank, built only when asked for: group g is
    named by its first taxon in lineage order (column `first[g]`) cut to the rank."""

    def __init__(self, columns: TaxaColumns, first: np.ndarray, rank: str) -> None:
        self.columns, self.first, self.rank = columns, first, rank

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, g):  # type: ignore[override]
        if isinstance(g, slice):
            return [self[i] for i in range(*g.indices(len(self)))]
        return self.columns.taxon(int(self.first[g])).at(self.rank)

    def __iter__(self) -> Iterator[Taxon]:
        return (self[g] for g in range(len(self)))


@dataclass(frozen=True)
class RankGroups:
    """The groups of one rank: `codes[i]` is taxon i's group, `taxa[g]` names group g.
    In lineage order group g spans sorted positions `starts[g]:starts[g+1]` (the columns
    themselves when the taxa are sorted)."""

    rank: str
    starts: np.ndarray
    codes: np.ndarray
    taxa: Sequence[Taxon]

    def __len__(self) -> int:
        return len(self.starts)


class RankIndex:
    """Groups of every rank over taxa sorted by lineage: a list of `Taxon` or
    `TaxaColumns` (the columnar form, for label sets of hundreds of thousands of taxa).
    `any_order=True` takes columns in any order (`order`: their lineage order, if known);
    when every taxon is its own group the group ids are then the column indices."""

    def __init__(self, taxa: Sequence[Taxon] | TaxaColumns, *, any_order: bool = False,
                 order: np.ndarray | None = None) -> None:
        self.columns = taxa if isinstance(taxa, TaxaColumns) else TaxaColumns.from_taxa(list(taxa))
        self.sorted = self.columns.is_sorted()
        if not (self.sorted or any_order):
            raise ValueError("RankIndex needs taxa sorted by lineage; use sort_taxa() first")
        self.order = None if self.sorted else (order if order is not None else self.columns.lineage_order())
        self._groups: dict[str, RankGroups] = {}
        self._taxa: list[Taxon] | None = taxa if isinstance(taxa, list) else None

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def taxa(self) -> list[Taxon]:
        """The taxa as `Taxon` objects, in column order (built on first use)."""
        if self._taxa is None:
            self._taxa = self.columns.to_taxa()
        return self._taxa

    def groups(self, rank: str) -> RankGroups:
        """The groups at `rank` (computed once, then cached)."""
        if rank not in self._groups:
            self._groups[rank] = self._build(rank)
        return self._groups[rank]

    def _build(self, rank: str) -> RankGroups:
        # in lineage order a group starts wherever any rank down to `rank` changes
        n = len(self.columns)
        new = np.zeros(n, dtype=bool)
        new[:1] = True
        for r in RANKS[:rank_index(rank) + 1]:
            codes = self.columns.codes[r] if self.order is None else self.columns.codes[r][self.order]
            new[1:] |= codes[1:] != codes[:-1]
        starts = np.flatnonzero(new).astype(np.int64)
        in_order = np.cumsum(new, dtype=np.int64) - 1
        if self.order is None:
            codes, first = in_order, starts
        elif len(starts) == n:  # one taxon a group: group g is column g
            codes = first = np.arange(n, dtype=np.int64)
        else:
            codes = np.empty(n, dtype=np.int64)
            codes[self.order] = in_order
            first = self.order[starts]
        return RankGroups(rank, starts, codes, GroupTaxa(self.columns, first, rank))

    def aggregate(self, probs: np.ndarray, rank: str) -> np.ndarray:
        """(n_images, n_taxa) species probabilities -> (n_images, n_groups) at `rank`."""
        probs = np.asarray(probs)
        if probs.shape[-1] != len(self):
            raise ValueError(f"probabilities have {probs.shape[-1]} columns for {len(self)} taxa")
        groups = self.groups(rank)
        if len(groups) == len(self):
            return probs  # every taxon is its own group (the usual species case)
        if self.order is None:
            return segment_sum(probs, groups.starts)
        return group_sum(probs, groups.codes, len(groups))


def segment_sum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of contiguous column segments beginning at `starts` (the last one runs to the
    end). An empty input gives an empty (n, len(starts)) array."""
    values = np.asarray(values)
    if values.shape[-1] == 0:
        return np.zeros(values.shape[:-1] + (len(starts),), dtype=values.dtype)
    return np.add.reduceat(values, starts, axis=-1)


def group_sum(values: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Column sums by arbitrary group codes (bins, or the groups of taxa in any order):
    `out[:, g] = values[:, codes == g].sum(1)`, one `np.bincount` per row (summed in
    float64), so memory stays (rows x groups) however many columns there are."""
    values = np.atleast_2d(np.asarray(values))
    dtype = np.float64 if values.dtype == np.float64 else np.float32
    codes = np.asarray(codes, dtype=np.int64)
    out = np.empty((len(values), n_groups), dtype=dtype)
    for i, row in enumerate(values):
        out[i] = np.bincount(codes, weights=row, minlength=n_groups)
    return out


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest scores per row, best first (ties: lower index).
    Wide rows (a published label set's 867k taxa) are done one at a time, so the index
    temporaries stay one row long."""
    scores = np.asarray(scores)
    k = max(0, min(k, scores.shape[-1]))
    if k == 0:
        empty = np.zeros(scores.shape[:-1] + (0,), dtype=np.int64)
        return empty, np.zeros(scores.shape[:-1] + (0,), dtype=scores.dtype)
    if scores.ndim == 2 and scores.shape[1] > WIDE_ROWS and len(scores) > 1:
        parts = [top_k(row[None], k) for row in scores]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if k < scores.shape[-1]:
        part = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[-1]), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=-1)
    # sort the k by score descending, index ascending on ties
    order = np.lexsort((part, -vals), axis=-1)
    idx = np.take_along_axis(part, order, axis=-1)
    return idx, np.take_along_axis(vals, order, axis=-1)


@dataclass(frozen=True)
class RollUp:
    """The answer of roll-up mode for one image: the deepest confident `rank` and its
    `taxon` (None and rank "unknown" when no rank clears the threshold)."""

    rank: str
    taxon: Taxon | None
    score: float


def roll_up(probs: np.ndarray, index: RankIndex, threshold: float,
            ranks: Sequence[str] = RANKS) -> list[RollUp]:
    """Per image, the deepest rank whose best summed probability is >= `threshold`, with
    that group; "unknown" when even the highest rank in `ranks` stays below it."""
    probs = np.atleast_2d(np.asarray(probs))
    n = probs.shape[0]
    answers: list[RollUp | None] = [None] * n
    pending = np.ones(n, dtype=bool)
    for rank in sorted(ranks, key=rank_index, reverse=True):  # deepest first
        if not pending.any():
            break
        rows = np.flatnonzero(pending)
        summed = index.aggregate(probs[rows], rank)
        best = summed.argmax(axis=-1)
        best_p = summed[np.arange(len(rows)), best]
        groups = index.groups(rank)
        for row, g, p in zip(rows, best, best_p):
            if p >= threshold:
                answers[row] = RollUp(rank, groups.taxa[g], float(p))
                pending[row] = False
    rows = np.flatnonzero(pending)
    if len(rows):
        # the score of an unknown is the best it reached at the highest rank tried
        summed = index.aggregate(probs[rows], min(ranks, key=rank_index))
        for row, p in zip(rows, summed.max(axis=-1) if summed.shape[-1] else np.zeros(len(rows))):
            answers[row] = RollUp("unknown", None, float(p))
    return answers  # type: ignore[return-value]
