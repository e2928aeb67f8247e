"""Partial fine-tuning: towers frozen as open_clip_train's `--lock-image*` / `--lock-text*`
flags freeze them, by open_clip's own `lock_image_tower` / `lock_text_tower` (LiT).

A layer group is what open_clip unlocks as one: for a ViT image tower, the stem
(patch embedding, class token, positions, ln_pre), each residual block, the last block with
ln_post, then the projection; for the text tower, the embeddings, each block, the last block
with ln_final, then the projection. `unlocked_groups=1` trains only the projection.
Frozen parameters get `requires_grad=False`, so the optimizer (`optim.make_optimizer`) never
holds them and DistributedDataParallel neither registers nor reduces them.
"""

from __future__ import annotations

import torch

from treeclip.errors import TreeclipError
from treeclip.log import get_logger
from treeclip.train.config import TrainConfig

log = get_logger(__name__)


def lock_towers(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Freeze the towers `cfg` locks, in place, on the open_clip CLIP module `model`."""
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups,
                               freeze_bn_stats=cfg.lock_image_freeze_bn_stats)
    if cfg.lock_text:
        try:
            model.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers,
                                  freeze_layer_norm=cfg.lock_text_freeze_layer_norm)
        except AssertionError:  # open_clip's own refusal (its built-in text tower)
            raise TreeclipError("--no-lock-text-freeze-layer-norm: this model's text tower (open_clip's built-in "
                                "transformer) cannot keep LayerNorms trainable in locked layers") from None
    if cfg.lock_image or cfg.lock_text:
        log.info(describe_trainable(model))


def trainable_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts of `model`."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def describe_trainable(model: torch.nn.Module) -> str:
    """One line: how much of the model trains, per tower."""
    trainable, total = trainable_counts(model)
    visual, visual_total = trainable_counts(model.visual)
    return (f"training {trainable:,} of {total:,} parameters ({100 * trainable / max(1, total):.1f}%); "
            f"image tower {visual:,} of {visual_total:,}")


def check_trainable(module: torch.nn.Module) -> None:
    """Refuse a run in which nothing would train."""
    if not any(p.requires_grad for p in module.parameters()):
        raise TreeclipError("--lock-image/--lock-text: no parameter is left to train")
