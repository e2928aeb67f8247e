"""Reading dataset shards for training and evaluation: a webdataset pipeline.

`TreeDataset` yields one dict per sample:
`{"key", "image": PIL RGB, "texts": {text_type: caption}, "cls": int, "meta": dict}`.

Shards are shuffled with the seed and epoch (the same order on every node), then split by
torch.distributed rank and by DataLoader worker, then samples are shuffled in a buffer
seeded per (seed, epoch, rank, worker). In resampled mode each worker draws shards with
replacement, forever, from a seed of its own (BioCLIP trains multi-node on resampled
shards); bound it with `.with_epoch(n)` or the training loop's step count.

The shards are plain webdataset tars, so code that knows nothing of treeclip reads them:

    import webdataset as wds
    ds = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "taxon_com.txt", "cls")

(webdataset lower-cases extensions, so plain code asks for `taxontag.txt`.)
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import webdataset as wds

from treeclip.log import get_logger
from treeclip.taxonomy.taxon import TEXT_TYPES

log = get_logger(__name__)


def _resolve_urls(source: str | os.PathLike | Sequence[str], split: str) -> list[str]:
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        from treeclip.data.dataset import shard_paths

        urls = shard_paths(source, split)
    elif isinstance(source, (str, os.PathLike)):
        urls = wds.shardlists.expand_urls(str(source))
    else:
        urls = [str(u) for u in source]
    if not urls:
        from treeclip.errors import TreeclipError

        raise TreeclipError(f"{source}: no shards for split {split!r}")
    return urls


def _worker_info() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers), from torch.distributed and the DataLoader."""
    return wds.utils.pytorch_worker_info()


def _seed(*parts: int) -> int:
    # A stable mix (Python's hash of ints is stable, but spell it out).
    s = 0
    for p in parts:
        s = (s * 1_000_003 + int(p)) & 0x7FFFFFFFFFFF
    return s


def decode_sample(sample: dict[str, Any], *, draft_size: int | None = None) -> dict[str, Any]:
    """A raw webdataset sample (bytes per extension) to treeclip's sample dict.
    `draft_size`: let the JPEG decode at reduced scale for a model of that input size
    (see `decode_image`). A sample without an image is an `InputError` naming it."""
    from treeclip.data.images import decode_image
    from treeclip.errors import InputError

    key = sample["__key__"]
    name = f"{sample.get('__url__', '')}:{key}.jpg"
    if "jpg" not in sample:
        raise InputError(f"{name}: no image member")
    # webdataset lower-cases extensions: `taxonTag.txt` arrives as `taxontag.txt`.
    texts = {t: sample[f"{t.lower()}.txt"].decode("utf-8") for t in TEXT_TYPES if f"{t.lower()}.txt" in sample}
    return {
        "key": key,
        "image": decode_image(sample["jpg"], name=name, draft_size=draft_size),
        "texts": texts,
        "cls": int(sample["cls"]),
        "meta": json.loads(sample["json"]) if "json" in sample else {},
    }


def _warn_and_skip(exn: BaseException) -> bool:
    log.warning(f"skipped a sample: {' '.join(str(exn).split())}")
    return True


class TreeDataset(wds.DataPipeline):
    """An iterable over a dataset dir's shards (or a list / brace pattern of shard URLs).

    - `shuffle`: sample shuffle buffer size (0 = read in shard order, no shuffling at all);
      with `shuffle > 0` the shard order is shuffled too.
    - `seed`: with `set_epoch`, fixes every shuffle; the same seed gives the same order.
    - `resampled`: draw shards with replacement forever (multi-node training).
    - `split_by_node`: give each torch.distributed rank a disjoint part of the shards
      (ignored in resampled mode, where ranks draw with different seeds instead).
    Extra pipeline stages can be appended with `.compose(...)` / `.map(...)` style calls
    of webdataset's fluid interface, e.g. `TreeDataset(d).batched(64)`.
    """

    def __init__(
        self,
        dataset_dir_or_shard_urls: str | os.PathLike | Sequence[str],
        split: str = "train",
        *,
        shuffle: int = 0,
        seed: int = 0,
        resampled: bool = False,
        split_by_node: bool = True,
        decode: bool = True,
    ) -> None:
        super().__init__()
        self.urls = _resolve_urls(dataset_dir_or_shard_urls, split)
        self.shuffle_size = shuffle
        self.seed = seed
        self.resampled = resampled
        self.split_by_node = split_by_node
        self.epoch = 0
        self.append(self._shards)
        self.append(wds.tarfile_to_samples(handler=_warn_and_skip))
        if shuffle > 0:
            self.append(self._shuffle_samples)
        if decode:
            self.append(wds.map(decode_sample, handler=_warn_and_skip))

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of `epoch` (call before iterating, in the main process)."""
        self.epoch = epoch

    def _shards(self) -> Iterator[dict[str, str]]:
        rank, world, worker, workers = _worker_info()
        if self.resampled:
            rng = random.Random(_seed(self.seed, self.epoch, rank, worker, 1))
            while True:
                yield {"url": rng.choice(self.urls)}
        urls = list(self.urls)
        if self.shuffle_size > 0:
            random.Random(_seed(self.seed, self.epoch)).shuffle(urls)  # same on every rank
        if self.split_by_node and world > 1:
            urls = urls[rank::world]
        for url in urls[worker::workers]:
            yield {"url": url}

    def _shuffle_samples(self, src: Iterator[dict]) -> Iterator[dict]:
        rank, _, worker, _ = _worker_info()
        rng = random.Random(_seed(self.seed, self.epoch, rank, worker, 2))
        buf: list[dict] = []
        for sample in src:
            if len(buf) < self.shuffle_size:
                buf.append(sample)
                continue
            i = rng.randrange(len(buf))
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf
