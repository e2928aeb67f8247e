"""Models: open_clip CLIP architectures by name, `ClipModel`, and model dirs.

    from treeclip.model import create_model, load_model, save_model, list_models
    clip = load_model("runs/demo/model")          # or "local-dir:...", a file, a registered name
    clip.encode_texts(["a photo of Pica hudsonia."])

Heavy imports (torch, open_clip) happen on first use of a function, not on import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from treeclip.model.registry import get_config, list_models

if TYPE_CHECKING:  # pragma: no cover
    from treeclip.model.checkpoint import load_model, save_model
    from treeclip.model.weights import read_state_dict
    from treeclip.model.factory import ClipModel, create_model, encode_tokens

_LAZY = {
    "ClipModel": "factory", "create_model": "factory", "encode_tokens": "factory",
    "count_parameters": "factory", "trim_padding": "factory", "build_clip": "factory",
    "load_model": "checkpoint", "save_model": "checkpoint", "read_config": "checkpoint",
    "read_state_dict": "weights",
}

__all__ = ["list_models", "get_config", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"treeclip.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'treeclip.model' has no attribute {name!r}")
