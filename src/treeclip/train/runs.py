"""A run dir belongs to one run: its identity is the `config.json` it was started with.

- A fresh run into a dir that holds another run's files is refused (`--overwrite` clears
  them first), so two runs' checkpoints never mix.
- A resumed run must have the settings the dir's run was started with, except those that
  cannot change the weights (`FREE_TO_CHANGE`: logging, checkpoint cadence, worker and
  thread counts, ...); `allow_changes` (`--allow-changed-settings`) accepts others, e.g.
  more steps, knowingly.
- Resuming from `latest` takes the newest checkpoint that reads back, falling back past a
  damaged one with a line saying so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

from treeclip.errors import TreeclipError
from treeclip.identity import RunIdentity
from treeclip.log import get_logger
from treeclip.train.config import TrainConfig
from treeclip.train.state import CHECKPOINTS, list_checkpoints

log = get_logger(__name__)

FREE_TO_CHANGE = frozenset({"out", "progress", "log_every", "save_every", "keep_checkpoints", "workers", "threads",
                            "label_set", "device", "hub_dir", "report_to"})
"""Settings a resumed run may change: none of them changes the weights a run ends with."""

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", CHECKPOINTS, "model", "best", "tensorboard", "wandb")
"""What a run writes into its dir (and `--overwrite` removes; nothing else is touched)."""


def used_by_a_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_FILES)


def clear_run(out: Path) -> None:
    """Remove what an earlier run wrote into `out` (and only that)."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_identity(out: Path, settings: dict) -> RunIdentity:
    """The identity of `out`'s run: the `config.json` it was started with (settings added
    since, e.g. `objective`, had their default then; `FREE_TO_CHANGE` ones are not part of it)."""
    return RunIdentity(out / "config.json", settings, free=FREE_TO_CHANGE, defaults=TrainConfig().as_dict())


def changed_settings(out: Path, settings: dict) -> list[str]:
    """The settings that differ from the ones `out`'s run was started with (none if it
    has no config.json)."""
    return run_identity(out, settings).changes() or []


def check_run_dir(out: Path, settings: dict, *, resuming: bool, allow_changes: bool) -> None:
    """Refuse to mix two runs in `out` (see the module docstring; `--overwrite` clears it
    with `clear_run` instead). `settings` is the run's config as `TrainConfig.as_dict()`."""
    if not resuming and used_by_a_run(out):
        raise TreeclipError(f"{out}: holds another run (config.json, checkpoints, model); resume it with "
                            "--resume latest, start afresh with --overwrite, or give another --out")
    changed = changed_settings(out, settings)
    if resuming and changed and not allow_changes:
        raise TreeclipError(f"{out}: its run was started with other {', '.join(changed)}; resuming with these "
                            "would not continue that run (--allow-changed-settings to do it anyway)")


def checkpoints_to_try(out: Path, spec: str) -> Iterator[Path]:
    """The checkpoints a resume from `spec` tries, in order: for `latest`, newest first
    (an unreadable one is passed over); otherwise the one named."""
    if spec != "latest":
        yield Path(spec)
        return
    found = list_checkpoints(out)
    for i, path in enumerate(reversed(found)):
        if i:
            log.warning(f"trying the checkpoint before it: {path}")
        yield path
