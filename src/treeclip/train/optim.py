"""AdamW with BioCLIP's settings and a cosine schedule with linear warmup.

Weight decay applies to matrices only: gains (LayerNorm weights), biases, embeddings of
rank < 2 and the logit scale are left undecayed, as in CLIP and open_clip. The schedule is
a pure function of the step, so resuming needs nothing but the step number.
"""

from __future__ import annotations

import math

import torch


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Gains, biases, 1-d embeddings and the logit scale are not decayed."""
    return param.ndim < 2 or name.endswith(".bias") or "logit_scale" in name


def make_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.98),
                   eps: float = 1e-6) -> torch.optim.AdamW:
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if no_decay(name, p) else decay).append(p)
    groups = [{"params": keep, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    # the fused kernel is several times faster than the per-tensor loop, same update rule
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


def lr_at(step: int, *, base_lr: float, warmup: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup over `warmup` steps to `base_lr`, then cosine decay to `min_lr` at
    `total_steps` (step counts from 0)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
