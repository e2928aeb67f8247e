"""The registry of model configs, by name.

Each config is a JSON file in `configs/` holding exactly what an exported model's
`open_clip_config.json` holds (`model_cfg` + `preprocess_cfg`) plus a one-line
`description`; adding a model means adding a file, no code.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

from treeclip.errors import TreeclipError

CONFIG_DIR = Path(__file__).with_name("configs")


@lru_cache(maxsize=1)
def _registry() -> dict[str, dict]:
    configs = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        configs[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    return configs


def list_models() -> list[str]:
    """The registered model names (BioCLIP's architecture and the small CPU configs)."""
    return list(_registry())


def is_registered(name: str) -> bool:
    return name in _registry()


def get_config(name: str) -> dict:
    """A deep copy of the registered config: `{"description", "model_cfg", "preprocess_cfg"}`.

    Names of open_clip's own built-in architectures (e.g. `ViT-B-32`) work too, with
    open_clip's default preprocessing."""
    if name in _registry():
        return copy.deepcopy(_registry()[name])
    import open_clip  # lazy: only for open_clip's built-ins

    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise TreeclipError(
            f"unknown model {name!r}; registered: {', '.join(list_models())} "
            "(or an open_clip architecture name, a model dir, local-dir:DIR or a checkpoint file)")
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    return {"description": f"open_clip built-in {name}", "model_cfg": model_cfg,
            "preprocess_cfg": default_preprocess_cfg(size)}


RESIZE_MODES = {"crop": "shortest", "squash": "squash"}
"""Inference resize modes (`--resize`) and the open_clip `resize_mode` each means."""


def default_preprocess_cfg(size: int) -> dict:
    """open_clip's default (OpenAI CLIP) preprocessing at `size` pixels."""
    from open_clip.transform import PreprocessCfg
    from dataclasses import asdict

    cfg = asdict(PreprocessCfg())
    cfg.update(size=size, mean=list(cfg["mean"]), std=list(cfg["std"]))
    return cfg
