"""LoRA fine-tuning through Hugging Face `peft` (`treeclip train --lora-rank R`).

peft's `get_peft_model` injects the adapters into the open_clip CLIP module in place
(`PeftModel.base_model.model` is the same module), so everything else in the trainer
(towers, validator, checkpoints) keeps working on `trainer.model`. The base weights are
frozen and stay bit-identical; the optimizer holds the adapters, `logit_scale`, and
whatever a `--lock-*-unlocked-*` flag leaves trainable in a locked tower.

Targets (`--lora-targets`, default `in_proj_weight,c_fc,c_proj`) are names matched as
peft matches them (the last dotted parts of a module or parameter name), in the towers
that are not locked (a locked tower gets no adapters; its unlocked groups train fully).
A name ending in `_weight` or `.weight` is a *parameter* target (peft's
`target_parameters`, a `torch.nn.utils.parametrize` delta): that is how the fused q/k/v
projection of open_clip's `nn.MultiheadAttention` (`attn.in_proj_weight`) is adapted
without touching the base weight. peft's own `nn.MultiheadAttention` layer (target
`attn`) merges and unmerges the delta around every forward, which rounds the base
weights a little each step, and a `nn.Linear` LoRA on `attn.out_proj` is never called by
`nn.MultiheadAttention.forward` (it reads `out_proj.weight`); peft 0.21 cannot wrap
both parameters of one attention module, so the attention output projection is not
adapted by default (give `out_proj.weight` instead of `in_proj_weight` to adapt it).
peft matches weight targets by name suffix, so with `--lock-image` alone the image tower
gets q/k/v adapters too (the text tower's names are suffixes of its names): they stay
frozen at their zero init and change nothing.

Export: `model/` is the LoRA merged into the weights (peft's `merge_and_unload` on a
copy: a plain open_clip `local-dir:` model), `model/lora/` the adapter alone in peft's
format (`adapter_model.safetensors`, `adapter_config.json`).
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import torch

from treeclip.errors import TreeclipError
from treeclip.log import get_logger
from treeclip.train.config import TrainConfig

log = get_logger(__name__)

ADAPTER_DIR = "lora"


def require_peft() -> None:
    if importlib.util.find_spec("peft") is None:
        raise TreeclipError("--lora-rank: the 'peft' package is not installed (pip install 'treeclip[lora]')")


def _is_param_target(name: str) -> bool:
    return name.endswith("_weight") or name.endswith(".weight")


def _matches(key: str, target: str) -> bool:
    return key == target or key.endswith("." + target)


def _tower_locked(name: str, cfg: TrainConfig) -> bool:
    return cfg.lock_image if name.startswith("visual.") else cfg.lock_text


def apply_lora(model: torch.nn.Module, cfg: TrainConfig):
    """Inject LoRA adapters into `model` (the open_clip CLIP module) in place, after
    `lock_towers`; returns the `PeftModel` (for export). Trainable afterwards: the
    adapters, `logit_scale`, and the groups a lock flag left unlocked in a locked tower."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    # what the lock flags leave trainable in a locked tower: trained in full, as without LoRA
    keep = {n for n, p in model.named_parameters() if p.requires_grad and _tower_locked(n, cfg)}
    targets = tuple(cfg.lora_targets)
    modules = [n for n, m in model.named_modules()
               if n and not _tower_locked(n, cfg) and isinstance(m, torch.nn.Linear)
               and any(_matches(n, t) for t in targets if not _is_param_target(t))]
    # a regex, matched whole: peft matches a list by suffix, and the text tower's names
    # (transformer.resblocks...) are suffixes of the image tower's (visual.transformer...)
    module_pattern = "^(?:" + "|".join(re.escape(n) for n in modules) + ")$" if modules else None
    params = [n for n, _ in model.named_parameters()
              if not _tower_locked(n, cfg) and any(_matches(n, t) for t in targets if _is_param_target(t))]
    if not modules and not params:
        raise TreeclipError(f"--lora-targets {','.join(targets)}: no linear layer or weight of an unlocked tower "
                            "matches")
    if params and cfg.lora_dropout:
        raise TreeclipError("--lora-dropout: peft cannot drop out a weight target "
                            f"({params[0].rsplit('.', 1)[-1]}); use module targets only (e.g. c_fc,c_proj)")
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=lora_alpha(cfg), lora_dropout=cfg.lora_dropout,
                        target_modules=module_pattern, target_parameters=params or None, bias="none")
    peft_model = get_peft_model(model, config)
    assert peft_model.base_model.model is model  # injected in place
    for name, p in model.named_parameters():
        if name == "logit_scale" or name in keep:
            p.requires_grad_(True)
        elif "lora_" in name and _tower_locked(name, cfg):
            # a weight target matched by suffix in a locked tower: frozen at its init (B = 0, no change)
            p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    log.info(f"LoRA rank {cfg.lora_rank} (alpha {lora_alpha(cfg):g}) on {len(modules)} layers and {len(params)} "
             f"weights: training {trainable:,} of {total:,} parameters ({100 * trainable / max(1, total):.2f}%)")
    return peft_model


def lora_alpha(cfg: TrainConfig) -> float:
    return float(cfg.lora_alpha) if cfg.lora_alpha is not None else 2.0 * cfg.lora_rank


def merged_copy(peft_model) -> torch.nn.Module:
    """A plain open_clip CLIP module: a copy of the model with the adapters merged into its
    weights (peft's merge_and_unload); the training model is left as it is."""
    return copy.deepcopy(peft_model).merge_and_unload()


def save_adapter(peft_model, out_dir: str | Path) -> Path:
    """The adapter alone, in peft's format, in `out_dir/lora/`."""
    out = Path(out_dir) / ADAPTER_DIR
    peft_model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # peft's model card template
    return out
