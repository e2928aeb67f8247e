"""Training data: the dataset's webdataset shards, read in an order that is a pure
function of (seed, epoch), so that resuming can skip exactly to where a run stopped.

Streaming readers (webdataset's shuffle buffer, `treeclip.data.reader.TreeDataset`) cannot
say "sample 123,456 of epoch 3" after a restart. Here each shard is indexed once (tar
headers only: where each sample's members start and end), an epoch is a seeded
permutation of all samples, and a global batch is a slice of it. The position in the data
is then just the step number, every rank reads a disjoint slice of the same global batch,
and N processes see exactly the samples one process would.

The text of each sample is chosen in the sampler (main process, seeded by step): the
text type of the whole global batch (BioCLIP's mixing), one type per sample, or a fixed
type. Workers decode, transform and tokenise, encoding each distinct caption once.
"""

from __future__ import annotations

import os
import sys
import tarfile
from dataclasses import dataclass
from typing import Callable

import torch

from treeclip.errors import InputError, TreeclipError
from treeclip.train.order import TEXT_MODES, BatchSampler, Plan, ShardIndex, mix_seed, split_shards

__all__ = ["TEXT_MODES", "BatchSampler", "Plan", "ShardIndex", "mix_seed", "split_shards", "ShardSamples",
           "Batch", "Collate", "make_loader"]


class ShardSamples(torch.utils.data.Dataset):
    """Map-style access to the samples of an index: item (index, text type, epoch) ->
    (pixels, caption, class, key, failures). A sample that cannot be decoded is reported
    on one line and replaced by the next decodable one, so batches keep their size on
    every rank (distributed training gathers equal-sized batches).

    Why training does not use the shared readers: `treeclip.data.reader.TreeDataset`
    streams shards and cannot restart at "sample 123,456 of epoch 3", and
    `treeclip.runtime.images.iter_batches` (inference) turns a bad input into an error row
    and a shorter batch. Training needs reads addressed by position (exact resume), a
    replacement for a bad sample (equal batches on every rank) and augmentation drawn from
    (seed, epoch, sample). What a sample *is* stays shared: its members are decoded by
    `treeclip.data.reader.decode_sample` (the same `decode_image` every stage uses)."""

    def __init__(self, index: ShardIndex, transform: Callable, *, seed: int = 0, augment: bool = False,
                 draft_size: int | None = None, max_tries: int = 16) -> None:
        self.index, self.transform, self.seed, self.augment = index, transform, seed, augment
        self.draft_size, self.max_tries = draft_size, max_tries
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):  # open file handles stay in the process that opened them
        return {**self.__dict__, "_files": {}}

    def _open_files(self) -> dict[int, object]:
        # a forked worker must not share file offsets with its parent: reopen
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        return self._files

    def load(self, i: int, text_type: str, epoch: int = 0):
        """Sample `i` (or the next readable one) with its caption of `text_type`."""
        from treeclip.data.reader import decode_sample

        failures = 0
        for attempt in range(self.max_tries):
            j = (i + attempt) % len(self.index)
            try:
                sample = decode_sample(self.index.read(j, self._open_files()), draft_size=self.draft_size)
                caption = sample["texts"][text_type]
            except (InputError, KeyError, ValueError, OSError, tarfile.TarError) as err:
                failures += 1
                reason = f"missing member {err}" if isinstance(err, KeyError) else str(err)
                print(f"treeclip: {self.index.shards[int(self.index.shard[j])]}: sample {j}: {reason}; skipped",
                      file=sys.stderr)
                continue
            return self._pixels(sample["image"], epoch, j), caption, sample["cls"], sample["key"], failures
        raise TreeclipError(f"{self.max_tries} samples in a row could not be read near sample {i}; "
                            "is the dataset damaged? (`treeclip data verify`)")

    def _pixels(self, image, epoch: int, j: int) -> torch.Tensor:
        if not self.augment:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):  # augmentation drawn from (seed, epoch, sample): same after resume
            torch.manual_seed(mix_seed(self.seed, epoch, j, 3))
            return self.transform(image)

    def __getitem__(self, item: tuple[int, str, int]):
        return self.load(*item)


@dataclass
class Batch:
    """One micro-batch: pixels (n, 3, H, W); the distinct captions tokenised (u, L) with
    padding trimmed and `caption_index` (n,) mapping each sample to its caption; classes."""

    pixels: torch.Tensor
    tokens: torch.Tensor
    caption_index: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    failures: int

    def __len__(self) -> int:
        return len(self.keys)


class Collate:
    """Stacks pixels and tokenises each distinct caption once (in the worker)."""

    def __init__(self, tokenizer: Callable) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list) -> Batch:
        from treeclip.model.factory import trim_padding

        pixels, captions, labels, keys, failures = zip(*items)
        distinct: dict[str, int] = {}
        caption_index = [distinct.setdefault(c, len(distinct)) for c in captions]
        tokens = trim_padding(self.tokenizer(list(distinct)))
        return Batch(torch.stack(pixels), tokens, torch.tensor(caption_index), torch.tensor(labels),
                     list(keys), sum(failures))


def make_loader(samples: ShardSamples, sampler: BatchSampler, tokenizer: Callable, *, workers: int = 1,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches in sampler order; `workers` decode in parallel and order is kept."""
    return torch.utils.data.DataLoader(
        samples, batch_sampler=sampler, collate_fn=Collate(tokenizer), num_workers=workers,
        pin_memory=pin_memory, persistent_workers=False, prefetch_factor=4 if workers else None,
        multiprocessing_context="fork" if workers and sys.platform == "linux" else None)
