"""One optimizer step: both towers in one module (what DistributedDataParallel wraps) and
the contrastive step on a global batch, exact under gradient accumulation."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from treeclip.runtime.precision import autocast as precision_autocast
from treeclip.train.classifier import classifier_step
from treeclip.train.data import Batch
from treeclip.train.loss import contrastive_loss


class Towers(torch.nn.Module):
    """Both encoders in one module (what DistributedDataParallel wraps): normalised
    image features, normalised features of each distinct caption mapped back to the
    samples, and the log temperature. With `replay_proj` (experience replay,
    `train.replay`) and a replay batch, also the replay images' features through that
    second projection and their captions' features, in the same forward pass."""

    def __init__(self, clip_model: torch.nn.Module, replay_proj: torch.nn.Parameter | None = None) -> None:
        super().__init__()
        self.clip = clip_model
        self.replay_proj = replay_proj

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor, caption_index: torch.Tensor,
                replay: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        from treeclip.model.factory import encode_tokens

        images = F.normalize(self.clip.encode_image(pixels), dim=-1)
        texts = F.normalize(encode_tokens(self.clip, tokens), dim=-1)[caption_index]
        if replay is None:
            return images, texts, self.clip.logit_scale
        from treeclip.train.replay import encode_replay_images

        r_pixels, r_tokens, r_index = replay
        r_images = F.normalize(encode_replay_images(self.clip.visual, self.replay_proj, r_pixels), dim=-1)
        r_texts = F.normalize(encode_tokens(self.clip, r_tokens), dim=-1)[r_index]
        return images, texts, self.clip.logit_scale, r_images, r_texts


def to_device(batch: Batch, device: torch.device) -> Batch:
    """`batch` with its tensors on `device` (asynchronous copies from pinned memory on GPU)."""
    nb = device.type == "cuda"
    batch.pixels = batch.pixels.to(device, non_blocking=nb)
    batch.tokens = batch.tokens.to(device, non_blocking=nb)
    batch.caption_index = batch.caption_index.to(device, non_blocking=nb)
    batch.labels = batch.labels.to(device, non_blocking=nb)
    return batch


def train_step(towers: torch.nn.Module, batches: list[Batch], optimizer: torch.optim.Optimizer, *,
               scaler=None, taxon_aware: bool = False, precision: str = "fp32",
               device: torch.device = torch.device("cpu"), classifier: bool = False,
               replay: Batch | None = None, replay_weight: float = 1.0) -> torch.Tensor:
    """One optimizer step on a global batch given as this rank's micro-batches; returns
    the (last) loss, detached.

    With several micro-batches (gradient accumulation) the contrastive loss still sees the
    whole batch: features of all micro-batches are first computed without gradients, then
    each micro-batch is recomputed with gradients against the others' cached features
    (exact for models without dropout). The log temperature gets its gradient once.
    With `classifier`, `towers` is an `ImageClassifier` whose forward is the loss.
    With a `replay` batch (one micro-batch only), its image-caption contrastive loss
    through the replay projection, times `replay_weight`, is added to the loss."""
    optimizer.zero_grad(set_to_none=True)
    autocast = precision_autocast(precision, device)
    labels = torch.cat([b.labels for b in batches])

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    if classifier:
        loss = classifier_step(towers, batches, autocast, backward)
    elif replay is not None:
        loss = _replay_step(towers, batches[0], replay, labels, autocast, taxon_aware, replay_weight)
        backward(loss)
    elif len(batches) == 1:
        b = batches[0]
        with autocast:
            images, texts, scale = towers(b.pixels, b.tokens, b.caption_index)
        loss = contrastive_loss(images.float(), texts.float(), scale.float(), labels, taxon_aware=taxon_aware)
        backward(loss)
    else:
        loss = _accumulate(towers, batches, labels, autocast, backward, taxon_aware)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach()


def _replay_step(towers: torch.nn.Module, b: Batch, replay: Batch, labels: torch.Tensor, autocast,
                 taxon_aware: bool, replay_weight: float) -> torch.Tensor:
    """The taxonomic loss of `b` plus `replay_weight` x the plain CLIP loss of `replay`."""
    with autocast:
        images, texts, scale, r_images, r_texts = towers(b.pixels, b.tokens, b.caption_index,
                                                          (replay.pixels, replay.tokens, replay.caption_index))
    loss = contrastive_loss(images.float(), texts.float(), scale.float(), labels, taxon_aware=taxon_aware)
    return loss + replay_weight * contrastive_loss(r_images.float(), r_texts.float(), scale.float())


def _accumulate(towers: torch.nn.Module, batches: list[Batch], labels: torch.Tensor, autocast,
                backward, taxon_aware: bool) -> torch.Tensor:
    """Backward of the whole-batch loss one micro-batch at a time (see `train_step`);
    gradients are synchronised across ranks on the last micro-batch only."""
    with torch.no_grad(), autocast:
        cached = [towers(b.pixels, b.tokens, b.caption_index)[:2] for b in batches]
    last = len(batches) - 1
    for j, b in enumerate(batches):
        sync = towers.no_sync() if hasattr(towers, "no_sync") and j < last else contextlib.nullcontext()
        with sync:
            with autocast:
                images, texts, scale = towers(b.pixels, b.tokens, b.caption_index)
            all_images = torch.cat([images if i == j else c[0] for i, c in enumerate(cached)]).float()
            all_texts = torch.cat([texts if i == j else c[1] for i, c in enumerate(cached)]).float()
            if j > 0:  # the temperature's gradient is taken once, at j = 0
                scale = scale.detach() + 0.0 * scale
            loss = contrastive_loss(all_images, all_texts, scale.float(), labels, taxon_aware=taxon_aware)
            backward(loss)
    return loss
