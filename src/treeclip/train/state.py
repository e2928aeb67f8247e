"""Training checkpoints: everything `--resume` needs to continue exactly.

`OUT/checkpoints/step-00001000/` holds `model.safetensors` (weights), `state.pt`
(optimizer, gradient scaler, step, RNG states; plain tensors and numbers, read back with
`torch.load(weights_only=True)`) and `meta.json`. A checkpoint is written into a hidden
temporary dir and renamed into place, so a run killed while saving leaves the previous
checkpoints intact and never a half-written one under a `step-*` name. The position in
the data is the step: the data order is a function of (seed, epoch) (see `data.py`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from treeclip import fsutil
from treeclip.errors import TreeclipError

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scaler=None, *, meta: dict | None = None, keep: int = 2,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint of `step` (steps done) atomically; keep the newest `keep`.
    `extra`: more training state for `state.pt` (tensors and numbers, e.g. the replay projection)."""
    from safetensors.torch import save_file

    root = Path(out_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    torch.save({"step": step, "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
                **(extra or {})},
               tmp / "state.pt")
    fsutil.write_json_atomic(tmp / "meta.json", {"step": step, **(meta or {})})
    for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "state.pt").is_file()] \
        if root.is_dir() else []
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(out_dir: str | Path, spec: str) -> Path | None:
    """`latest` -> the newest checkpoint of the run in `out_dir` (None if it has none);
    otherwise `spec` is a checkpoint dir."""
    if spec == "latest":
        found = list_checkpoints(out_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not (path / "state.pt").is_file() or not (path / "model.safetensors").is_file():
        raise TreeclipError(f"{spec}: not a training checkpoint (needs model.safetensors and state.pt)")
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, state) of a checkpoint, read without unpickling code."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        weights = load_file(str(path / "model.safetensors"), device="cpu")
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:
        raise TreeclipError(f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    return weights, state


def read_meta(path: str | Path) -> dict:
    try:
        return json.loads((Path(path) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
