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

import io
import os
import random
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from treeclip.errors import InputError, TreeclipError
from treeclip.taxonomy.taxon import MIXED_TEXT_TYPES, TEXT_TYPES

TEXT_MODES = ("mixed", "mixed-sample")


def mix_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python hash randomisation)."""
    s = 0x9E3779B97F4A7C15
    for p in parts:
        s = ((s ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return s >> 1


# -- the shard index ----------------------------------------------------------------------


@dataclass
class ShardIndex:
    """Where every sample lives: shard number and byte range [start, end) of its members."""

    shards: list[str]
    shard: np.ndarray   # int32 per sample
    start: np.ndarray   # int64 per sample: offset of its first tar header
    end: np.ndarray     # int64 per sample: end of its last member's data blocks

    def __len__(self) -> int:
        return len(self.shard)

    @classmethod
    def build(cls, shards: Sequence[str]) -> "ShardIndex":
        """Scan the tar headers of `shards` (data blocks are skipped, not read)."""
        idx_shard, idx_start, idx_end = [], [], []
        for s, path in enumerate(shards):
            key = None
            try:
                with tarfile.open(path, mode="r:") as tar:
                    for member in tar:
                        if not member.isfile():
                            continue
                        this = member.name.rsplit("/", 1)[-1].split(".", 1)[0]
                        stop = member.offset_data + (member.size + 511) // 512 * 512
                        if this != key:
                            key = this
                            idx_shard.append(s)
                            idx_start.append(member.offset)
                            idx_end.append(stop)
                        else:
                            idx_end[-1] = stop
            except (OSError, tarfile.TarError) as err:
                raise TreeclipError(f"{path}: unreadable shard ({err})") from None
        if not idx_shard:
            raise TreeclipError(f"no samples in {len(shards)} shard(s): {', '.join(shards[:3])}")
        return cls(list(shards), np.asarray(idx_shard, np.int32), np.asarray(idx_start, np.int64),
                   np.asarray(idx_end, np.int64))

    def read(self, i: int, files: dict[int, object]) -> dict[str, bytes]:
        """The raw members of sample `i` as webdataset names them: `{"__key__", "jpg",
        "taxon_com.txt", ...}` (extensions lower-cased, as webdataset does)."""
        s = int(self.shard[i])
        f = files.get(s)
        if f is None:
            f = files[s] = open(self.shards[s], "rb")
        f.seek(int(self.start[i]))
        blob = f.read(int(self.end[i] - self.start[i]))
        sample: dict[str, bytes | str] = {"__url__": self.shards[s]}
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            for member in tar:
                key, _, ext = member.name.rsplit("/", 1)[-1].partition(".")
                sample["__key__"] = key
                sample[ext.lower()] = tar.extractfile(member).read()
        return sample


# -- which samples and captions form each batch -------------------------------------------


@dataclass
class Plan:
    """The data order: global batch `g` of the run is samples `order(g)` of epoch
    `g // batches_per_epoch`; rank `r` reads its slice. Partial batches at the end of an
    epoch are dropped, so every step has the full global batch."""

    n_samples: int
    global_batch: int
    seed: int
    world_size: int = 1
    rank: int = 0
    accum_steps: int = 1
    text_type: str = "mixed"
    text_types: tuple[str, ...] = MIXED_TEXT_TYPES

    def __post_init__(self) -> None:
        if self.global_batch % (self.world_size * self.accum_steps):
            raise TreeclipError(f"batch size {self.global_batch} must divide into {self.world_size} process(es) "
                                f"x {self.accum_steps} accumulation step(s)")
        if self.batches_per_epoch < 1:
            raise TreeclipError(f"batch size {self.global_batch} is larger than the {self.n_samples} training samples")
        if self.text_type not in TEXT_MODES and self.text_type not in TEXT_TYPES:
            raise TreeclipError(f"unknown text type {self.text_type!r}; expected {', '.join(TEXT_MODES + TEXT_TYPES)}")
        self._perm_epoch, self._perm = -1, None

    @property
    def batches_per_epoch(self) -> int:
        return self.n_samples // self.global_batch

    @property
    def micro_batch(self) -> int:
        """Samples per rank per forward pass."""
        return self.global_batch // (self.world_size * self.accum_steps)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng(mix_seed(self.seed, epoch, 1)).permutation(self.n_samples)
            self._perm_epoch = epoch
        return self._perm

    def text_types_for(self, step: int) -> list[str]:
        """The text type of every sample of global batch `step` (same on every rank)."""
        if self.text_type in TEXT_TYPES:
            return [self.text_type] * self.global_batch
        rng = random.Random(mix_seed(self.seed, step, 2))
        if self.text_type == "mixed":
            return [rng.choice(self.text_types)] * self.global_batch
        return [rng.choice(self.text_types) for _ in range(self.global_batch)]

    def micro_batches(self, step: int) -> list[list[tuple[int, str, int]]]:
        """This rank's micro-batches of global batch `step`: lists of
        (sample index, text type, epoch)."""
        epoch, b = divmod(step, self.batches_per_epoch)
        order = self.epoch_order(epoch)[b * self.global_batch:(b + 1) * self.global_batch]
        types = self.text_types_for(step)
        per_rank = self.global_batch // self.world_size
        lo = self.rank * per_rank
        mine = [(int(order[i]), types[i], epoch) for i in range(lo, lo + per_rank)]
        m = self.micro_batch
        return [mine[j * m:(j + 1) * m] for j in range(self.accum_steps)]


class BatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches from step `start_step` to `end_step`, in order."""

    def __init__(self, plan: Plan, start_step: int, end_step: int) -> None:
        self.plan, self.start_step, self.end_step = plan, start_step, end_step

    def __iter__(self) -> Iterator[list[tuple[int, str, int]]]:
        for step in range(self.start_step, self.end_step):
            yield from self.plan.micro_batches(step)

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.plan.accum_steps


# -- decoding -----------------------------------------------------------------------------


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


def split_shards(dataset: str | Path, split: str) -> list[str]:
    """The shard paths of a split of a dataset dir (a TreeclipError if there are none)."""
    from treeclip.data.dataset import shard_paths

    paths = shard_paths(dataset, split)
    if not paths:
        raise TreeclipError(f"{dataset}: split {split!r} has no shards")
    return paths
