"""The classification baselines of BioCLIP's objective ablation: the same image tower,
data and steps as a CLIP run, trained with cross-entropy over species (`ce`) or with
hierarchical cross-entropy, one head per rank and the losses summed (`hier-ce`), instead
of the contrastive loss on text.

The heads are cosine classifiers on the L2-normalised image embedding (the features that
zero-shot and few-shot use), each with a learned temperature clamped like CLIP's. Only the
image tower and the heads train; the text tower is frozen at its initialisation, so the
exported model dir stays a plain open_clip model (`treeclip.model.heads` holds the heads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from treeclip.taxonomy.taxon import RANKS, Taxon
from treeclip.train.loss import LOGIT_SCALE_INIT

OBJECTIVE_RANKS = {"ce": ("species",), "hier-ce": RANKS}


class RankHeads(torch.nn.Module):
    """One cosine head per rank over the training classes' taxa at that rank. The species
    class index of a sample (the dataset's `cls`) gives its class at every rank."""

    def __init__(self, embed_dim: int, classes: list[Taxon], ranks: tuple[str, ...]) -> None:
        super().__init__()
        self.ranks, self.classes = ranks, list(classes)
        for rank in ranks:
            depth = RANKS.index(rank) + 1
            ids: dict[tuple[str, ...], int] = {}
            index = [ids.setdefault(t.lineage[:depth], len(ids)) for t in classes]
            self.register_buffer(f"{rank}_of_species", torch.tensor(index, dtype=torch.long), persistent=False)
            weight = torch.empty(len(ids), embed_dim)
            torch.nn.init.normal_(weight, std=1 / math.sqrt(embed_dim))
            self.register_parameter(f"{rank}_weight", torch.nn.Parameter(weight))
        # a temperature per head: 3 kingdoms and 265 species want different sharpness
        self.logit_scale = torch.nn.Parameter(torch.full((len(ranks),), LOGIT_SCALE_INIT))

    def logits(self, features: torch.Tensor, rank: str) -> torch.Tensor:
        """Scaled cosine logits of L2-normalised `features` at `rank`."""
        weight = F.normalize(getattr(self, f"{rank}_weight"), dim=-1)
        return self.logit_scale[self.ranks.index(rank)].exp() * features @ weight.T

    def loss(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Cross-entropy at each rank of the heads, summed (one rank: plain cross-entropy)."""
        return sum(F.cross_entropy(self.logits(features, r).float(), getattr(self, f"{r}_of_species")[species])
                   for r in self.ranks)

    def export_state(self) -> dict[str, torch.Tensor]:
        """The tensors `treeclip.model.heads` stores: `{rank}.weight` and `logit_scale`."""
        return {**{f"{r}.weight": getattr(self, f"{r}_weight") for r in self.ranks}, "logit_scale": self.logit_scale}


class ImageClassifier(torch.nn.Module):
    """The image tower of a CLIP model plus rank heads; `forward` returns the loss of a
    micro-batch (what DistributedDataParallel wraps in a classification run)."""

    def __init__(self, clip_model: torch.nn.Module, heads: RankHeads) -> None:
        super().__init__()
        self.clip, self.heads = clip_model, heads
        for name, p in clip_model.named_parameters():  # the text tower and CLIP's temperature stay as built
            p.requires_grad_(name.startswith("visual."))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(pixels), dim=-1)

    def forward(self, pixels: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.heads.loss(self.features(pixels), species)


def classifier_step(model: torch.nn.Module, batches: list, autocast, backward) -> torch.Tensor:
    """Forward and backward of one global batch given as micro-batches: cross-entropy is a
    mean over samples, so each micro-batch's loss counts by its share of the batch
    (gradients synchronised across ranks on the last micro-batch only). Returns the
    batch's mean loss."""
    import contextlib

    total = sum(len(b) for b in batches)
    summed = torch.zeros(())
    for j, b in enumerate(batches):
        sync = model.no_sync() if hasattr(model, "no_sync") and j < len(batches) - 1 else contextlib.nullcontext()
        with sync:
            with autocast:
                loss = model(b.pixels, b.labels)
            backward(loss.float() * (len(b) / total))
        summed += loss.detach().float().cpu() * len(b)
    return summed / total


@torch.no_grad()
def classifier_validation(model: ImageClassifier, batches) -> dict[str, float]:
    """Validation cross-entropy (summed over the heads' ranks) and species top-1 of the
    head over `batches` (collated val samples)."""
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for b in batches:
        feats = model.features(b.pixels)
        loss_sum += float(model.heads.loss(feats, b.labels)) * len(b)
        species = model.heads.species_of_species[b.labels]
        correct += int((model.heads.logits(feats, "species").argmax(dim=-1) == species).sum())
        total += len(b)
    model.train()
    return {"val_loss": loss_sum / max(1, total), "top1": correct / max(1, total), "val_samples": total}
