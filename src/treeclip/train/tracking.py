"""Trackers (`--report-to tensorboard,wandb`): sinks of `metrics.MetricsLog`, fed the very
records it appends to `metrics.jsonl` (which stays the source of truth), on rank 0 only.

Each numeric field of a record becomes a scalar `<type>/<field>` at the record's step
(`train/loss`, `train/lr`, `train/logit_scale`, `train/samples_per_s`, `val/val_loss`,
`val/zeroshot_top1`, ...); a dict of numbers becomes one scalar per key
(`train/text_type_share/sci`). When the run mixes text types one per batch,
`text_types_by_step` (step -> the type drawn) becomes `train/text_type_index` at each
step, the index into the run's `text_types` (written once as text, `train/text_types`).

TensorBoard writes `OUT/tensorboard/`; a resumed run purges what the killed run logged
after the resumed step (`purge_step`), as `metrics.jsonl` drops those lines. Weights &
Biases runs offline only (`OUT/wandb/`, sync it yourself with `wandb sync`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol, Sequence

from treeclip.errors import TreeclipError
from treeclip.log import get_logger

log = get_logger(__name__)


class Sink(Protocol):
    """What `MetricsLog` feeds: every record, then flush (at checkpoints) and close."""

    def write(self, record: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The `<type>/<field>` scalars of one metrics record (see the module docstring)."""
    kind = record.get("type", "train")
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("step", "type"):
            continue
        if _is_number(value):
            out[f"{kind}/{key}"] = float(value)
        elif isinstance(value, dict) and all(_is_number(v) for v in value.values()):
            out.update({f"{kind}/{key}/{k}": float(v) for k, v in value.items()})
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(tracker: str) -> None:
    """One line when a tracker's package is not installed."""
    module = {"tensorboard": "tensorboard", "wandb": "wandb"}[tracker]
    if importlib.util.find_spec(module) is None:
        hint = "pip install 'treeclip[tensorboard]'" if tracker == "tensorboard" else "pip install wandb"
        raise TreeclipError(f"--report-to {tracker}: the {module!r} package is not installed ({hint})")


class TensorboardSink:
    """`torch.utils.tensorboard.SummaryWriter` into `OUT/tensorboard/`."""

    def __init__(self, out: Path, *, resume_step: int | None, text_types: Sequence[str]) -> None:
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events at steps >= it: what a killed run logged past its checkpoint
        self.writer = SummaryWriter(str(out / "tensorboard"),
                                    purge_step=resume_step + 1 if resume_step is not None else None)
        self.text_types = list(text_types)
        if resume_step is None:
            self.writer.add_text("train/text_types",
                                 ", ".join(f"{i}: {t}" for i, t in enumerate(self.text_types)), 0)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        for drawn_step, text_type in (record.get("text_types_by_step") or {}).items():
            if text_type in self.text_types:
                self.writer.add_scalar("train/text_type_index", self.text_types.index(text_type), int(drawn_step))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run, offline (`mode="offline"`, files in `OUT/wandb/`); its id is
    the run dir's name, so a resumed run continues the same wandb run."""

    def __init__(self, out: Path, *, resume_step: int | None, config: dict[str, Any]) -> None:
        require("wandb")
        import wandb

        (out / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(out / "wandb"), project="treeclip", name=out.resolve().name,
                              id=_wandb_id(out), resume="allow" if resume_step is not None else None, config=config)

    def write(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record.get("step", 0)))

    def flush(self) -> None:
        """wandb writes its offline files as it goes."""

    def close(self) -> None:
        self.run.finish()


def _wandb_id(out: Path) -> str:
    """A wandb run id from the run dir (letters, digits, dashes)."""
    import hashlib

    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]


def check_trackers(report_to: Sequence[str]) -> None:
    """Fail before any work when a tracker's package is missing."""
    for tracker in report_to:
        require(tracker)


def make_sinks(report_to: Sequence[str], out: Path, *, resume_step: int | None, text_types: Sequence[str],
               config: dict[str, Any]) -> list[Sink]:
    """The sinks `report_to` names (call on rank 0 only)."""
    sinks: list[Sink] = []
    for tracker in report_to:
        if tracker == "tensorboard":
            sinks.append(TensorboardSink(out, resume_step=resume_step, text_types=text_types))
        elif tracker == "wandb":
            sinks.append(WandbSink(out, resume_step=resume_step, config=config))
    if sinks:
        log.info(f"reporting metrics to {', '.join(report_to)} under {out}")
    return sinks
