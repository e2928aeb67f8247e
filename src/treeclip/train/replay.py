"""Experience replay (BioCLIP 2): general image-caption pairs mixed into every batch.

A replay source is a webdataset of `jpg` + `txt` samples (no taxonomy). A share
`replay_ratio` of each global batch is drawn from it, in an order that is a function of
(seed, step) like the tree-of-life data (`Plan`), so resuming is exact. Its images go
through the image tower with a second visual projection (`replay_proj`, initialised as a
copy of the model's) and give their own image-caption contrastive loss, added to the
taxonomic loss: the general captions train the trunk without pulling the projection the
taxonomy trains. `replay_proj` lives in the training state, not in the exported model.
"""

from __future__ import annotations

import glob
import os
import tarfile
from pathlib import Path
from typing import Callable

import torch

from treeclip.errors import InputError, TreeclipError
from treeclip.log import get_logger
from treeclip.train.order import ShardIndex

log = get_logger(__name__)

REPLAY_SEED = 7
"""Mixed into the run's seed for the replay order (independent of the taxonomic order)."""


def replay_shards(spec: str) -> list[str]:
    """The shards of a replay source: a dir (its `*.tar`, recursively, sorted), one
    `.tar` file, or a brace pattern (`replay/{000..009}.tar`)."""
    path = Path(spec)
    if path.is_dir():
        shards = sorted(str(p) for p in path.rglob("*.tar"))
    elif path.is_file():
        shards = [str(path)]
    else:
        import braceexpand

        shards = [p for pattern in braceexpand.braceexpand(spec) for p in sorted(glob.glob(pattern))]
    if not shards:
        raise TreeclipError(f"--replay-data {spec}: no .tar shards found")
    return shards


def replay_batch_size(batch_size: int, ratio: float, divisor: int) -> int:
    """The replay samples of a global batch of `batch_size`: `ratio` of it, rounded to a
    multiple of `divisor` (processes), at least one multiple and leaving taxonomic samples."""
    n = int(round(batch_size * ratio / divisor)) * divisor
    if n < divisor or batch_size - n < 2:
        raise TreeclipError(f"--replay-ratio {ratio} of a batch of {batch_size} leaves no room for "
                            f"{'replay' if n < divisor else 'taxonomic'} samples (in {divisor} process(es))")
    return n


def replay_projection(model: torch.nn.Module) -> torch.nn.Parameter:
    """A second visual projection: a trainable copy of the image tower's `proj`."""
    proj = getattr(model.visual, "proj", None)
    if not isinstance(proj, torch.Tensor):
        raise TreeclipError("--replay-data needs an image tower with a projection matrix "
                            "(open_clip's VisionTransformer `proj`)")
    return torch.nn.Parameter(proj.detach().clone())


def encode_replay_images(visual: torch.nn.Module, proj: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The image tower's features of `pixels` through `proj` instead of its own projection."""
    return torch.func.functional_call(visual, {"proj": proj}, (pixels,), strict=False)


class ReplaySamples(torch.utils.data.Dataset):
    """Map-style replay samples: item (index, text type, epoch) -> (pixels, caption, -1,
    key, failures), as `ShardSamples` gives them (the text type is not used: a replay
    sample has one caption). An unreadable sample is reported and replaced by the next."""

    def __init__(self, index: ShardIndex, transform: Callable, *, draft_size: int | None = None,
                 max_tries: int = 16) -> None:
        self.index, self.transform, self.draft_size, self.max_tries = index, transform, draft_size, max_tries
        self._files: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}

    def _open_files(self) -> dict[int, object]:
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        return self._files

    def __getitem__(self, item: tuple[int, str, int]):
        from treeclip.data.images import decode_image

        i = item[0]
        for attempt in range(self.max_tries):
            j = (i + attempt) % len(self.index)
            try:
                raw = self.index.read(j, self._open_files())
                name = f"{raw['__url__']}:{raw['__key__']}"
                caption = raw["txt"].decode("utf-8").strip()
                image = decode_image(raw["jpg"], name=name, draft_size=self.draft_size)
            except (InputError, KeyError, ValueError, OSError, tarfile.TarError) as err:
                log.warning(f"{self.index.shards[int(self.index.shard[j])]}: replay sample {j}: {err}; skipped")
                continue
            return self.transform(image), caption, -1, str(raw["__key__"]), attempt
        raise TreeclipError(f"{self.max_tries} replay samples in a row could not be read near sample {i}")
