"""The training loop: CLIP on taxonomic text, one CPU process to many GPUs on many nodes.

    from treeclip.train import TrainConfig, train
    train(make_config(preset="cpu-demo", data="data/synth", out="runs/demo"))

Outputs in `out`: `config.json`, `metrics.jsonl` (one JSON object per log line),
`checkpoints/step-*/` (for `--resume`), `model/` (the final model, a dir that plain
open_clip loads) and `best/` (the model with the best validation zero-shot accuracy).

The run itself is a `treeclip.train.trainer.Trainer`; one step is `train.step`,
validation `train.validate`, checkpoints `train.state`, the data order `train.data`.
"""

from __future__ import annotations

from typing import Any

from treeclip.errors import TreeclipError
from treeclip.train.config import TrainConfig
from treeclip.runtime.distributed import cleanup, init_distributed
from treeclip.train.state import find_checkpoint
from treeclip.train.step import Towers, train_step
from treeclip.train.trainer import Trainer


def train(cfg: TrainConfig, *, resume: str | None = None) -> dict[str, Any]:
    """Run (or resume) training as `cfg` says; returns a summary dict. Joins the process
    group when launched by torchrun/srun. `resume`: `latest` (the newest checkpoint in
    `cfg.out`, or a fresh start if there is none) or a checkpoint dir."""
    cfg.validate()
    info = init_distributed(cfg.device)
    try:
        checkpoint = find_checkpoint(cfg.out, resume) if resume else None
        if resume and resume != "latest" and checkpoint is None:
            raise TreeclipError(f"{resume}: no checkpoint to resume from")
        trainer = Trainer(cfg, info)
        if checkpoint is not None:
            trainer.resume(checkpoint)
        return trainer.run()
    finally:
        cleanup()


__all__ = ["train", "Trainer", "Towers", "train_step"]
