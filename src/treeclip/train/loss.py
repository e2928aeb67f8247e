"""CLIP's contrastive loss, distributed as BioCLIP ran it (local loss + gather with grad):
open_clip's `ClipLoss`, with an optional taxon-aware variant.

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
from open_clip.loss import ClipLoss

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (e.g. class labels) from every rank, without gradients."""
    _, world = _rank_and_world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class ContrastiveLoss(ClipLoss):
    """open_clip's `ClipLoss` as BioCLIP ran it (`local_loss=True, gather_with_grad=True`,
    rank and world size read from torch.distributed when `distributed`), plus the
    taxon-aware variant.

    Differences in use: `logit_scale` is the log temperature (the model's parameter; its
    exp multiplies the cosine similarities, as open_clip's training loop passes it), and
    `labels` (class per pair) feed the taxon-aware mask. The plain loss is open_clip's
    `forward` itself. The gather with gradients is open_clip's (`torch.distributed.nn.
    all_gather`), which works on gloo: there its backward sums the gradients with an
    all-to-all made of scatters instead of a reduce-scatter, which gloo lacks."""

    def __init__(self, *, taxon_aware: bool = False, distributed: bool = True) -> None:
        rank, world = _rank_and_world() if distributed else (0, 1)
        super().__init__(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
        self.taxon_aware = taxon_aware

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        scale = logit_scale.exp()
        if not self.taxon_aware:
            return super().forward(image_features, text_features, scale)
        if labels is None:
            raise ValueError("the taxon-aware loss needs class labels")
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, scale)
        n = image_features.shape[0]
        targets = self.get_ground_truth(image_features.device, n)
        all_labels = gather_no_grad(labels) if self.world_size > 1 else labels
        not_negative = labels[:, None] == all_labels[None, :]
        not_negative[torch.arange(n, device=labels.device), targets] = False
        logits_per_image = logits_per_image.masked_fill(not_negative, float("-inf"))
        logits_per_text = logits_per_text.masked_fill(not_negative, float("-inf"))
        return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     labels: torch.Tensor | None = None, *, taxon_aware: bool = False,
                     distributed: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch, computed locally on this rank's rows
    (`ContrastiveLoss`).

    `image_features`/`text_features`: this rank's L2-normalised float32 features (n, d),
    pair i is (image i, caption i). `logit_scale`: the log temperature (a parameter; its
    exp multiplies the cosine similarities). `labels`: class per pair (n,), needed for the
    taxon-aware variant, where other pairs of the same class are left out of the softmax.
    With `distributed` and torch.distributed initialised, features are gathered from all
    ranks with gradients."""
    return ContrastiveLoss(taxon_aware=taxon_aware, distributed=distributed)(
        image_features, text_features, logit_scale, labels)


@torch.no_grad()
def clamp_logit_scale(model: torch.nn.Module) -> None:
    """Keep the log temperature in [0, ln 100] (BioCLIP/open_clip clamp after each step)."""
    model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
