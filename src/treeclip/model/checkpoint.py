"""Model directories: save and load (weights read without unpickling untrusted data).

A model dir is what open_clip's `local-dir:` schema reads:
`open_clip_config.json` (`model_cfg` + `preprocess_cfg`) and `open_clip_model.safetensors`,
plus `treeclip.json` (name, fingerprint, training metadata) that open_clip ignores. A
published open_clip repo (`hf-hub:imageomics/bioclip-2`) is a model dir too: its snapshot
in the local Hugging Face cache, or the folder `huggingface-cli download --local-dir` wrote.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from treeclip import fsutil
from treeclip.errors import TreeclipError
from treeclip.model.factory import ClipModel, build_clip, create_model
from treeclip.model.hub import is_hub_spec
from treeclip.model.registry import get_config, is_registered
from treeclip.model.weights import CONFIG_FILE, LOCAL_DIR, WEIGHTS_FILE, resolve_source, weights_path

META_FILE = "treeclip.json"


def save_model(clip: ClipModel, out_dir: str | Path, meta: dict | None = None) -> Path:
    """Write `clip` as a model dir that plain `open_clip.create_model_and_transforms(
    'local-dir:OUT_DIR')` loads with no treeclip code. Each file is written atomically,
    the weights first and `treeclip.json` last. Returns the dir."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in clip.model.state_dict().items()}
    with fsutil.atomic_path(out / WEIGHTS_FILE, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    config = {"model_cfg": clip.config["model_cfg"], "preprocess_cfg": clip.config["preprocess_cfg"]}
    fsutil.write_json_atomic(out / CONFIG_FILE, config)
    from treeclip import __version__

    info = {
        "name": clip.name,
        "fingerprint": clip.fingerprint(refresh=True),
        "embed_dim": clip.embed_dim,
        "image_size": clip.image_size,
        "context_length": clip.context_length,
        "parameters": clip.num_parameters(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "treeclip_version": __version__,
        "meta": meta or {},
    }
    fsutil.write_json_atomic(out / META_FILE, info)
    return out


def read_config(model_dir: str | Path) -> dict:
    """`{"model_cfg", "preprocess_cfg"}` of a model dir, with a clear error if unusable."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TreeclipError(f"{path}: missing; a model dir needs {CONFIG_FILE} and {WEIGHTS_FILE}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TreeclipError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise TreeclipError(f"{path}: has no 'model_cfg'")
    if "preprocess_cfg" not in config or "size" not in config["preprocess_cfg"]:
        from treeclip.model.registry import default_preprocess_cfg

        size = config["model_cfg"].get("vision_cfg", {}).get("image_size", 224)
        config["preprocess_cfg"] = {**default_preprocess_cfg(size), **config.get("preprocess_cfg", {})}
    return {"model_cfg": config["model_cfg"], "preprocess_cfg": config["preprocess_cfg"]}


def load_model(spec: str, *, device: str | torch.device = "cpu", precision: str = "fp32",
               hub_dir: str | Path | None = None) -> ClipModel:
    """A model from `spec`: a model dir, `local-dir:DIR`, `hf-hub:ORG/NAME` (read from the
    local Hugging Face cache, never downloaded, `hub_dir` searched first, default
    `CachePaths.default().hub`; see `treeclip.model.hub`), a weights file with
    `open_clip_config.json` beside it, or a registered name (random weights, seed 0)."""
    from treeclip.cache import CachePaths

    spec = str(spec)
    path = resolve_source(spec, hub_dir=hub_dir if hub_dir is not None else CachePaths.default().hub)
    if path.is_dir():
        model_dir, weights = path, weights_path(path)
    elif path.is_file():
        model_dir, weights = path.parent, path
    elif spec.startswith(LOCAL_DIR) or not _is_architecture(spec):
        raise TreeclipError(f"{spec}: no such model dir, weights file or registered model "
                            "(`treeclip models` lists the registered ones)")
    else:
        return create_model(spec, precision=precision, device=device)
    config = read_config(model_dir)
    name = spec if is_hub_spec(spec) else _model_name(model_dir)
    clip = ClipModel(model=build_clip(config, precision=precision), name=name, config=config)
    clip.load_weights(weights)
    clip.model.to(device)
    clip.model.eval()
    return clip


def _is_architecture(name: str) -> bool:
    if is_registered(name):
        return True
    try:
        get_config(name)
        return True
    except TreeclipError:
        return False


def _model_name(model_dir: Path) -> str:
    try:
        return json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return model_dir.resolve().name
