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

import json
from pathlib import Path
from typing import Any

from treeclip.errors import TreeclipError
from treeclip.log import get_logger
from treeclip.runtime.distributed import barrier, cleanup, init_distributed
from treeclip.train.config import TrainConfig
from treeclip.train.runs import check_run_dir, checkpoints_to_try, clear_run
from treeclip.train.state import find_checkpoint
from treeclip.train.step import Towers, train_step
from treeclip.train.trainer import Trainer
from treeclip.train.tracking import check_trackers

log = get_logger(__name__)


def train(cfg: TrainConfig, *, resume: str | None = None, overwrite: bool = False,
          allow_changes: bool = False) -> dict[str, Any]:
    """Run (or resume) training as `cfg` says; returns a summary dict. Joins the process
    group when launched by torchrun/srun. `resume`: `latest` (the newest readable
    checkpoint in `cfg.out`, or a fresh start if there is none) or a checkpoint dir.
    A run dir holds one run (`train.runs`): `overwrite` clears another run's files first,
    `allow_changes` resumes with settings other than the run's own."""
    cfg.validate()
    check_trackers(cfg.report_to)  # a missing tracker package is one line before anything loads
    info = init_distributed(cfg.device)
    try:
        out = Path(cfg.out)
        if overwrite:
            if info.is_main:
                clear_run(out)
            barrier()
        else:  # every rank checks (read only), so every rank stops on a refusal
            check_run_dir(out, cfg.as_dict(), resuming=resume is not None, allow_changes=allow_changes)
        if resume and resume != "latest":
            find_checkpoint(out, resume)  # a named checkpoint must look like one
        trainer = Trainer(cfg, info)
        if resume:
            _resume(trainer, out, resume)
        finished = _already_finished(trainer, out)
        return finished if finished is not None else trainer.run()
    finally:
        cleanup()


def _resume(trainer: Trainer, out: Path, spec: str) -> None:
    """Resume from the first checkpoint of `spec` that reads back (see `train.runs`)."""
    failures = []
    for checkpoint in checkpoints_to_try(out, spec):
        try:
            trainer.resume(checkpoint)
            return
        except TreeclipError as err:
            if spec != "latest":
                raise
            failures.append(str(err))
            log.warning(str(err))
    if failures:
        raise TreeclipError(f"{out}: no checkpoint reads back ({len(failures)} tried); start afresh with --overwrite")


def _already_finished(trainer: Trainer, out: Path) -> dict[str, Any] | None:
    """The summary of a run resumed at its last step that already wrote its model; an
    error for a checkpoint past the run's steps; None when there is training to do."""
    step, total = trainer.progress.step, trainer.total_steps
    if step > total:
        raise TreeclipError(f"{trainer.progress.resumed_from}: at step {step}, past this run's {total} steps")
    summary = out / "summary.json"
    if step == total and summary.is_file() and (out / "model" / "open_clip_model.safetensors").is_file():
        log.info(f"{out} finished its {total} steps already; nothing to do")
        return json.loads(summary.read_text(encoding="utf-8"))
    return None


__all__ = ["train", "Trainer", "Towers", "train_step"]
