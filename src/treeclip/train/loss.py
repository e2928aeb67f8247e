"""CLIP's contrastive loss, distributed as BioCLIP ran it (local loss + gather with grad),
with an optional taxon-aware variant.

Local loss: each rank scores only its own images (rows) and its own captions (columns)
against the features of the whole global batch, gathered with gradients. Averaging the
ranks' gradients (DistributedDataParallel) then gives exactly the gradient of the
single-process loss on the global batch, at 1/world of the logits memory.

Taxon-aware: when a batch holds several samples of one taxon their captions are the same
(or name the same taxon), so the plain loss asks the model to tell apart identical
captions. The taxon-aware variant takes the other same-taxon pairs out of the softmax:
a sample's own pair is still the target, but same-taxon pairs are not negatives.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own rows
    (all_reduce then slice: works on gloo, which has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (same shape on every rank) from every rank in rank order;
    gradients flow back to each rank's piece. A no-op without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (e.g. class labels) from every rank, without gradients."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     labels: torch.Tensor | None = None, *, taxon_aware: bool = False,
                     distributed: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch, computed locally on this rank's rows.

    `image_features`/`text_features`: this rank's L2-normalised features (n, d), pair i
    is (image i, caption i). `logit_scale`: the log temperature (a parameter; its exp
    multiplies the cosine similarities). `labels`: class per pair (n,), needed for the
    taxon-aware variant, where other pairs of the same class are left out of the softmax.
    With `distributed` and torch.distributed initialised, features are gathered from all
    ranks with gradients."""
    n = image_features.shape[0]
    if distributed:
        all_images, all_texts = gather_with_grad(image_features), gather_with_grad(text_features)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    else:
        all_images, all_texts, rank = image_features, text_features, 0
    scale = logit_scale.exp()
    logits_per_image = scale * image_features @ all_texts.T
    logits_per_text = scale * text_features @ all_images.T
    targets = torch.arange(n, device=image_features.device) + rank * n
    if taxon_aware:
        if labels is None:
            raise ValueError("the taxon-aware loss needs class labels")
        all_labels = gather_no_grad(labels) if distributed else labels
        not_negative = labels[:, None] == all_labels[None, :]
        not_negative[torch.arange(n, device=labels.device), targets] = False
        logits_per_image = logits_per_image.masked_fill(not_negative, float("-inf"))
        logits_per_text = logits_per_text.masked_fill(not_negative, float("-inf"))
    return (F.cross_entropy(logits_per_image.float(), targets) + F.cross_entropy(logits_per_text.float(), targets)) / 2


@torch.no_grad()
def clamp_logit_scale(model: torch.nn.Module) -> None:
    """Keep the log temperature in [0, ln 100] (BioCLIP/open_clip clamp after each step)."""
    model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
