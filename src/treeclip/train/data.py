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
from treeclip.log import get_logger
from treeclip.train.order import TEXT_MODES, BatchSampler, Plan, ShardIndex, mix_seed, split_shards

log = get_logger(__name__)

__all__ = ["TEXT_MODES", "BatchSampler", "Plan", "ShardIndex", "mix_seed", "split_shards", "ShardSamples",
           "ImageCache", "Batch", "Collate", "caption_token_ids", "make_loader"]


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
                 draft_size: int | None = None, max_tries: int = 16, cache_images: bool = False,
                 relabel: Callable[[int, int], int] | None = None) -> None:
        self.index, self.transform, self.seed, self.augment = index, transform, seed, augment
        self.relabel = relabel  # (sample, its dataset's class) -> the run's class (several sources)
        self.draft_size, self.max_tries = draft_size, max_tries
        self._files: dict[int, object] = {}
        self._pid = os.getpid()
        self.cache: ImageCache | None = None
        if cache_images and not augment:
            self.cache = ImageCache.build(self, transform)

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
        pixels, caption, cls, key, failures = self._load(i, text_type, epoch)
        if self.relabel is not None:
            cls = self.relabel((i + failures) % len(self.index), cls)
        return pixels, caption, cls, key, failures

    def _load(self, i: int, text_type: str, epoch: int = 0):
        from treeclip.data.reader import decode_sample

        if self.cache is not None:
            return self.cache.load(i, text_type, self.max_tries)
        failures = 0
        for attempt in range(self.max_tries):
            j = (i + attempt) % len(self.index)
            try:
                sample = decode_sample(self.index.read(j, self._open_files()), draft_size=self.draft_size)
                caption = sample["texts"][text_type]
            except (InputError, KeyError, ValueError, OSError, tarfile.TarError) as err:
                failures += 1
                reason = f"missing member {err}" if isinstance(err, KeyError) else str(err)
                _skipped(self.index, j, reason)
                continue
            return self._pixels(sample["image"], epoch, j), caption, sample["cls"], sample["key"], failures
        raise _damaged(self.max_tries, i)

    def _pixels(self, image, epoch: int, j: int) -> torch.Tensor:
        if not self.augment:
            return self.transform(image)
        with torch.random.fork_rng(devices=[]):  # augmentation drawn from (seed, epoch, sample): same after resume
            torch.manual_seed(mix_seed(self.seed, epoch, j, 3))
            return self.transform(image)

    def __getitem__(self, item: tuple[int, str, int]):
        return self.load(*item)


def _skipped(index: ShardIndex, j: int, reason: str) -> None:
    log.warning(f"{index.shards[int(index.shard[j])]}: sample {j}: {reason}; skipped")


def _damaged(tries: int, i: int) -> TreeclipError:
    return TreeclipError(f"{tries} samples in a row could not be read near sample {i}; "
                         "is the dataset damaged? (`treeclip data verify`)")


CACHE_MAX_BYTES = 4 << 30
"""Datasets whose resized images take more memory than this are streamed, not cached."""


@dataclass
class ImageCache:
    """Every training image decoded and resized once, held as uint8 (n, 3, H, W), with
    each sample's captions and class: what `ShardSamples` does per read, without the
    JPEG decode and resize at every step. Only the exact tail of the eval transform (to
    float, /255, normalise) is done per read, the same float operations as
    torchvision's `ToTensor` + `Normalize`, so the pixels are bit-identical to the
    streamed ones (tested). Unreadable samples are reported once, while caching, and
    replaced at each read by the next readable one, as when streaming."""

    pixels: torch.Tensor
    ok: list[bool]
    texts: list[dict[str, str]]
    classes: list[int]
    keys: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    index: ShardIndex

    @classmethod
    def build(cls, samples: "ShardSamples", transform: Callable) -> "ImageCache | None":
        """The cache of `samples`, or None (streamed) when `transform` does not end in
        ToTensor + Normalize or the images would take more than `CACHE_MAX_BYTES`."""
        from treeclip.data.reader import decode_sample

        head, mean, std, size = _split_transform(transform)
        n = len(samples.index)
        if head is None or n * 3 * size * size > CACHE_MAX_BYTES:
            log.info("training images are decoded at every read (not cached: "
                     f"{'transform' if head is None else 'too large'})")
            return None
        pixels = torch.zeros((n, 3, size, size), dtype=torch.uint8)
        ok, texts, classes, keys = [False] * n, [{}] * n, [0] * n, [""] * n
        files: dict[int, object] = {}
        for j in range(n):
            try:
                sample = decode_sample(samples.index.read(j, files), draft_size=samples.draft_size)
                pixels[j] = _to_uint8(head(sample["image"]), size)
            except (InputError, KeyError, ValueError, OSError, tarfile.TarError) as err:
                _skipped(samples.index, j, f"missing member {err}" if isinstance(err, KeyError) else str(err))
                continue
            ok[j], texts[j], classes[j], keys[j] = True, sample["texts"], sample["cls"], sample["key"]
        for f in files.values():
            f.close()
        return cls(pixels, ok, texts, classes, keys, mean, std, samples.index)

    def load(self, i: int, text_type: str, max_tries: int):
        """As `ShardSamples.load`, from memory."""
        failures = 0
        for attempt in range(max_tries):
            j = (i + attempt) % len(self.ok)
            if not self.ok[j] or text_type not in self.texts[j]:
                if self.ok[j]:
                    _skipped(self.index, j, f"missing member '{text_type.lower()}.txt'")
                failures += 1
                continue
            pixels = self.pixels[j].to(torch.float32).div(255).sub_(self.mean).div_(self.std)
            return pixels, self.texts[j][text_type], self.classes[j], self.keys[j], failures
        raise _damaged(max_tries, i)


def _split_transform(transform: Callable):
    """(the PIL part, mean, std, size) of a Compose ending in ToTensor + Normalize of a
    square image, else (None, None, None, 0)."""
    import torchvision.transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 3 or not isinstance(steps[-2], T.ToTensor) or not isinstance(steps[-1], T.Normalize):
        return None, None, None, 0
    sizes = [s.size for s in steps if isinstance(s, T.CenterCrop)]
    if not sizes or sizes[-1][0] != sizes[-1][1]:
        return None, None, None, 0
    norm = steps[-1]
    mean = torch.as_tensor(norm.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(norm.std, dtype=torch.float32).view(-1, 1, 1)
    return T.Compose(steps[:-2]), mean, std, int(sizes[-1][0])


def _to_uint8(image, size: int) -> torch.Tensor:
    import numpy as np

    arr = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise ValueError(f"transformed to {arr.shape}, expected {(size, size, 3)}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


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
    """Stacks pixels and tokenises each distinct caption once (in the worker); a
    caption's tokens are kept, so each caption is tokenised once per run, not per batch
    (a tree of life has far fewer captions than a run has samples)."""

    MAX_KEPT = 200_000

    def __init__(self, tokenizer: Callable) -> None:
        self.tokenizer = tokenizer
        self._tokens: dict[str, torch.Tensor] = {}

    def tokens(self, captions: list[str]) -> torch.Tensor:
        """The tokenizer's rows for `captions`, from the kept ones where it can."""
        new = [c for c in dict.fromkeys(captions) if c not in self._tokens]
        if new:
            if len(self._tokens) + len(new) > self.MAX_KEPT:
                self._tokens.clear()
            self._tokens.update(zip(new, self.tokenizer(new)))
        return torch.stack([self._tokens[c] for c in captions])

    def __call__(self, items: list) -> Batch:
        from treeclip.model.factory import trim_padding

        pixels, captions, labels, keys, failures = zip(*items)
        distinct: dict[str, int] = {}
        caption_index = [distinct.setdefault(c, len(distinct)) for c in captions]
        tokens = trim_padding(self.tokens(list(distinct)))
        return Batch(torch.stack(pixels), tokens, torch.tensor(caption_index), torch.tensor(labels),
                     list(keys), sum(failures))


def caption_token_ids(dataset: str | os.PathLike, tokenizer: Callable) -> torch.Tensor:
    """The token ids of every caption of every text type of a dataset's taxa, with the
    padding, start- and end-of-text ids: all a compact vocabulary needs for training."""
    from treeclip.data.dataset import read_taxa
    from treeclip.taxonomy.taxon import TEXT_TYPES

    captions = sorted({t.caption(tt) for t in read_taxa(dataset) for tt in TEXT_TYPES})
    ids = [torch.tensor([0])] + [tokenizer(captions[i:i + 4096]).flatten() for i in range(0, len(captions), 4096)]
    return torch.unique(torch.cat(ids))


def make_loader(samples: ShardSamples, sampler: BatchSampler, tokenizer: Callable, *, workers: int = 1,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches in sampler order; `workers` decode in parallel and order is kept."""
    return torch.utils.data.DataLoader(
        samples, batch_sampler=sampler, collate_fn=Collate(tokenizer), num_workers=workers,
        pin_memory=pin_memory, persistent_workers=False, prefetch_factor=4 if workers else None,
        multiprocessing_context="fork" if workers and sys.platform == "linux" else None)
