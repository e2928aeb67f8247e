"""Several training datasets in one run, each weighted (open_clip_train's
`--train-data-upsampling-factors`): the shards of all sources form one index, the
sources' taxa one merged label space, and each sample is drawn with probability
proportional to its source's weight (so a source's share of a batch is size x weight).
The draws are a function of (seed, step) (`treeclip.train.order.Plan`), exact on resume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from treeclip.errors import TreeclipError
from treeclip.log import get_logger
from treeclip.taxonomy.taxon import Taxon
from treeclip.train.order import ShardIndex, split_shards

log = get_logger(__name__)


@dataclass
class Sources:
    """The training sources of a run: `index` over all their train shards (in source
    order), the merged `taxa`, `labels[s]` mapping source `s`'s class index to the merged
    one, the source of every shard and the probability of drawing each sample."""

    dirs: list[str]
    index: ShardIndex
    taxa: list[Taxon]
    labels: list[np.ndarray]
    source_of_shard: np.ndarray
    probabilities: np.ndarray

    @classmethod
    def open(cls, dirs: Sequence[str], weights: Sequence[float] = ()) -> "Sources":
        """Index `dirs` (datasets made by `treeclip data`) with `weights` (one per dir; all 1 when empty)."""
        from treeclip.data.dataset import read_taxa

        weights = list(weights) or [1.0] * len(dirs)
        if len(weights) != len(dirs):
            raise TreeclipError(f"--data-weights: {len(weights)} weight(s) for {len(dirs)} data source(s)")
        shards, source_of_shard = [], []
        for s, d in enumerate(dirs):
            paths = split_shards(d, "train")
            shards += paths
            source_of_shard += [s] * len(paths)
        taxa, labels = merge_taxa([read_taxa(d) for d in dirs])
        index = ShardIndex.build(shards)
        source_of_shard = np.asarray(source_of_shard, np.int32)
        per_sample = np.asarray(weights, np.float64)[source_of_shard[index.shard]]
        sizes = np.bincount(source_of_shard[index.shard], minlength=len(dirs))
        log.info("training sources: " + ", ".join(
            f"{d} ({n} samples x {w:g})" for d, n, w in zip(dirs, sizes, weights)) + f"; {len(taxa)} taxa merged")
        return cls(list(dirs), index, taxa, labels, source_of_shard, per_sample / per_sample.sum())

    def relabel(self, j: int, cls: int) -> int:
        """The merged class of sample `j`, whose own dataset calls it `cls`."""
        return int(self.labels[int(self.source_of_shard[int(self.index.shard[j])])][cls])


def merge_taxa(per_source: Sequence[Sequence[Taxon]]) -> tuple[list[Taxon], list[np.ndarray]]:
    """One label space for several datasets: the taxa in order of first appearance (a
    taxon is the same in two datasets when its ranks are; the first common name is kept),
    and for each dataset its class index -> the merged index."""
    merged: dict[tuple[str, ...], int] = {}
    taxa: list[Taxon] = []
    labels = []
    for source in per_source:
        mapping = []
        for taxon in source:
            key = taxon.lineage
            if key not in merged:
                merged[key] = len(taxa)
                taxa.append(taxon)
            mapping.append(merged[key])
        labels.append(np.asarray(mapping, np.int64))
    return taxa, labels
