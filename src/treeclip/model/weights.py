"""Weights files: found in a model dir, read without unpickling untrusted data, and loaded
into an open_clip module (older checkpoint layouts converted by open_clip's own helpers).
"""

from __future__ import annotations

from pathlib import Path

import torch

from treeclip.errors import TreeclipError
from treeclip.model import hub

LOCAL_DIR = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# open_clip's own search order inside a dir, safetensors first
DIR_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "pytorch_model.bin",
                "pytorch_model.pth", "model.pth")


def strip_local_dir(spec: str | Path) -> Path:
    """The path of a spec, without open_clip's `local-dir:` schema."""
    text = str(spec)
    return Path(text[len(LOCAL_DIR):] if text.startswith(LOCAL_DIR) else text)


def resolve_source(spec: str | Path, *, hub_dir: str | Path | None = None) -> Path:
    """The path a model spec names: `hf-hub:ORG/NAME` -> its snapshot folder in the local
    Hugging Face cache (which must hold the config and a weights file; `hub_dir` is searched
    first, see `model.hub`), `local-dir:DIR` -> DIR, anything else -> itself."""
    if hub.is_hub_spec(spec):
        return hub.find_snapshot(str(spec), "model", [(CONFIG_FILE,), DIR_WEIGHTS], hub=hub_dir,
                                 what=f"model files ({CONFIG_FILE} and a weights file, e.g. {WEIGHTS_FILE})")
    return strip_local_dir(spec)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a weights file: safetensors, or a torch file loaded with
    `weights_only=True` (so a malicious pickle cannot run code). A `state_dict` key and a
    `module.` prefix (DistributedDataParallel) are unwrapped."""
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise TreeclipError(f"{path}: not a weights file (expected {', '.join(WEIGHT_SUFFIXES)})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TreeclipError(f"{path}: no such file") from None
    except Exception as err:  # corrupt file, or a pickle that needs code to load
        raise TreeclipError(f"{path}: cannot read weights ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise TreeclipError(f"{path}: no tensors found")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def weights_path(source: str | Path, *, hub_dir: str | Path | None = None) -> Path:
    """The weights file of `source`: a file, or the first of open_clip's names in a dir
    (`hf-hub:ORG/NAME` is its snapshot folder, `hub_dir` searched first)."""
    path = resolve_source(source, hub_dir=hub_dir)
    if path.is_dir():
        for name in DIR_WEIGHTS:
            if (path / name).is_file():
                return path / name
        raise TreeclipError(f"{path}: no weights file in this model dir (expected {WEIGHTS_FILE})")
    if not path.exists():
        raise TreeclipError(f"{path}: no such file or directory")
    return path


def load_state_into(model: torch.nn.Module, source: str | Path, *, name: str,
                    hub_dir: str | Path | None = None) -> None:
    """Load the weights of `source` (a file, a model dir, `local-dir:DIR` or
    `hf-hub:ORG/NAME` from the local cache, `hub_dir` searched first) into `model`,
    strictly: every weight must fit the architecture `name`."""
    from open_clip.factory import convert_state_dict, resize_pos_embed, resize_text_pos_embed

    path = weights_path(source, hub_dir=hub_dir)
    state = read_state_dict(path)
    try:
        state = convert_state_dict(model, state)
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        model.load_state_dict(state, strict=True)
    except Exception as err:
        raise TreeclipError(f"{path}: weights do not fit model {name!r} "
                            f"({str(err).splitlines()[0][:300]})") from None


def architecture_differences(model_cfg: dict, source: str | Path, *, hub_dir: str | Path | None = None) -> list[str]:
    """The `model_cfg` settings (dotted names) in which the `open_clip_config.json` beside
    `source`'s weights differs from `model_cfg`; none when `source` has no config (a bare
    weights file). Shapes are checked when the weights load; this catches what loads but
    computes otherwise (e.g. QuickGELU vs GELU)."""
    import json

    path = weights_path(source, hub_dir=hub_dir)
    try:
        theirs = json.loads((path.parent / CONFIG_FILE).read_text(encoding="utf-8"))["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    a, b = _flatten(model_cfg), _flatten(theirs)
    unset = (None, False)  # open_clip reads an absent flag as off
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not (a.get(k) in unset and b.get(k) in unset))


def _flatten(cfg: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as {"vision_cfg.width": 768, ...}."""
    flat: dict[str, object] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
