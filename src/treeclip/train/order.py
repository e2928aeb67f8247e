"""The data order: each shard indexed once (`ShardIndex`), and which samples and
captions form each global batch (`Plan`, `BatchSampler`), a pure function of (seed, step).
See `treeclip.train.data` for why training reads shards by position."""

from __future__ import annotations

import io
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from treeclip.errors import TreeclipError
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
    epoch are dropped, so every step has the full global batch.

    With `shard_of` (the shard number of each sample) the order is resampled instead, as
    open_clip_train's `--dataset-resampled`: shards are drawn with replacement, a
    window of `SHARDS_PER_WINDOW` draws at a time (fewer when there are fewer shards),
    each window's samples shuffled together (as a shuffle buffer mixes the shards its
    workers read), and the windows concatenated into one endless stream; global batch `g`
    is samples `g*B .. (g+1)*B` of it. Still a pure function of (seed, step): exact on
    resume and the same global batches for any number of processes. An "epoch" is then
    only a length (`batches_per_epoch` steps); the window number takes its place in
    seeding augmentation.

    With `weights` (several weighted sources) global batch `g` is `global_batch` samples
    drawn with replacement, each with its probability, from `mix_seed(seed, g, 5)`; an
    epoch is again only a length (`n_samples // global_batch` steps)."""

    n_samples: int
    global_batch: int
    seed: int
    world_size: int = 1
    rank: int = 0
    accum_steps: int = 1
    text_type: str = "mixed"
    text_types: tuple[str, ...] = MIXED_TEXT_TYPES
    shard_of: np.ndarray | None = None
    weights: np.ndarray | None = None   # probability of each sample: weighted sources (`train.sources`)

    SHARDS_PER_WINDOW = 8

    def __post_init__(self) -> None:
        if self.global_batch % (self.world_size * self.accum_steps):
            raise TreeclipError(f"batch size {self.global_batch} must divide into {self.world_size} process(es) "
                                f"x {self.accum_steps} accumulation step(s)")
        if self.batches_per_epoch < 1:
            raise TreeclipError(f"batch size {self.global_batch} is larger than the {self.n_samples} training samples")
        if self.text_type not in TEXT_MODES and self.text_type not in TEXT_TYPES:
            raise TreeclipError(f"unknown text type {self.text_type!r}; expected {', '.join(TEXT_MODES + TEXT_TYPES)}")
        self._perm_epoch, self._perm = -1, None
        if self.shard_of is not None:
            self._stream = ResampledStream(np.asarray(self.shard_of), self.seed,
                                           min(self.SHARDS_PER_WINDOW, int(np.max(self.shard_of)) + 1))

    @property
    def resampled(self) -> bool:
        return self.shard_of is not None

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
        if self.weights is not None:
            order = np.random.default_rng(mix_seed(self.seed, step, 5)).choice(
                self.n_samples, size=self.global_batch, p=self.weights)
            epochs = np.full(len(order), step // self.batches_per_epoch)
        elif self.resampled:
            order, epochs = self._stream.slice(step * self.global_batch, (step + 1) * self.global_batch)
        else:
            epoch, b = divmod(step, self.batches_per_epoch)
            order = self.epoch_order(epoch)[b * self.global_batch:(b + 1) * self.global_batch]
            epochs = np.full(len(order), epoch)
        types = self.text_types_for(step)
        per_rank = self.global_batch // self.world_size
        lo = self.rank * per_rank
        mine = [(int(order[i]), types[i], int(epochs[i])) for i in range(lo, lo + per_rank)]
        m = self.micro_batch
        return [mine[j * m:(j + 1) * m] for j in range(self.accum_steps)]


class ResampledStream:
    """The endless sample stream of the resampled mode (see `Plan`): window `w` is
    `per_window` shards drawn with replacement from `mix_seed(seed, w, 4)`, its samples
    shuffled together. Only window sizes are kept for the whole run (to find where a
    position falls); the contents of the windows in use are made on demand."""

    def __init__(self, shard_of: np.ndarray, seed: int, per_window: int) -> None:
        self.seed, self.per_window = seed, per_window
        n_shards = int(shard_of.max()) + 1
        self.members = [np.flatnonzero(shard_of == s) for s in range(n_shards)]
        self.sizes = np.asarray([len(m) for m in self.members], np.int64)
        self.starts = [0]                  # stream position where window w starts
        self._window: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def _draws(self, w: int) -> tuple[np.random.Generator, np.ndarray]:
        rng = np.random.default_rng(mix_seed(self.seed, w, 4))
        return rng, rng.integers(0, len(self.members), size=self.per_window)

    def _window_at(self, pos: int) -> int:
        while self.starts[-1] <= pos:  # extend the window starts to cover `pos`
            _, draws = self._draws(len(self.starts) - 1)
            self.starts.append(self.starts[-1] + int(self.sizes[draws].sum()))
        return int(np.searchsorted(self.starts, pos, side="right")) - 1

    def window(self, w: int) -> np.ndarray:
        """The sample indices of window `w`, in stream order."""
        if self._window[0] != w:
            rng, draws = self._draws(w)
            members = np.concatenate([self.members[d] for d in draws])
            self._window = (w, members[rng.permutation(len(members))])
        return self._window[1]

    def slice(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample indices, window numbers) of stream positions lo .. hi-1."""
        out, wins = [], []
        pos = lo
        while pos < hi:
            w = self._window_at(pos)  # the starts now reach past pos: window w ends at starts[w + 1]
            start, end = self.starts[w], self.starts[w + 1]
            take = self.window(w)[pos - start:min(hi, end) - start]
            out.append(take)
            wins.append(np.full(len(take), w))
            pos += len(take)
        return np.concatenate(out), np.concatenate(wins)


class BatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches from step `start_step` to `end_step`, in order."""

    def __init__(self, plan: Plan, start_step: int, end_step: int) -> None:
        self.plan, self.start_step, self.end_step = plan, start_step, end_step

    def __iter__(self) -> Iterator[list[tuple[int, str, int]]]:
        for step in range(self.start_step, self.end_step):
            yield from self.plan.micro_batches(step)

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.plan.accum_steps


def split_shards(dataset: str | Path, split: str) -> list[str]:
    """The shard paths of a split of a dataset dir (a TreeclipError if there are none)."""
    from treeclip.data.dataset import shard_paths

    paths = shard_paths(dataset, split)
    if not paths:
        raise TreeclipError(f"{dataset}: split {split!r} has no shards")
    return paths
