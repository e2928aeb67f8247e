"""What a run logs: `metrics.jsonl` (one JSON object per line, `"type": "train"` or
`"val"`), the throughput window behind each train line, and the mean of a number over
all processes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from treeclip import fsutil
from treeclip.log import get_logger

log = get_logger(__name__)


class MetricsLog:
    """metrics.jsonl: appended line by line; on resume, lines after the resumed step go.
    `sinks` (trackers, `train.tracking`) get each record after it is on disk, `flush` at
    checkpoints and `close` at the end."""

    def __init__(self, path: Path, *, resume_step: int | None, enabled: bool, sinks: Sequence[Any] = ()) -> None:
        self.path, self.enabled = path, enabled
        self.sinks = list(sinks) if enabled else []
        if not enabled:
            return
        if resume_step is not None and path.exists():
            kept = [line for line, record in _records(path) if record.get("step", 0) <= resume_step]
            fsutil.write_text_atomic(path, "".join(line + "\n" for line in kept))
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            for sink in self.sinks:
                sink.write(record)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def _records(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of each readable line; a line a kill cut short (or any line that is
    not a JSON object) is dropped with a note, not a traceback."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            out.append((line, record))
        else:
            log.warning(f"{path}: line {n} is not a whole metrics record (a killed write?); dropped")
    return out


@dataclass
class ThroughputWindow:
    """The steps since the last train line: samples, seconds waiting for data and
    computing, and the summed loss."""

    started: float = field(default_factory=time.perf_counter)
    samples: int = 0
    data_s: float = 0.0
    compute_s: float = 0.0
    loss_sum: float = 0.0
    steps: int = 0
    text_types: dict[int, list[str]] = field(default_factory=dict)  # step -> the type of each sample

    def add_text_types(self, step: int, types: list[str]) -> None:
        self.text_types[step] = types

    def text_type_fields(self, mixed: Sequence[str]) -> dict[str, Any]:
        """What the window drew from the `mixed` text types: `text_type_share` (type ->
        fraction of its samples, 0 for a type not drawn) and, when each step drew one type,
        `text_types_by_step` (step -> type)."""
        if not self.text_types:
            return {}
        drawn = [t for types in self.text_types.values() for t in types]
        share = {t: round(drawn.count(t) / len(drawn), 6) for t in mixed}
        fields: dict[str, Any] = {"text_type_share": share}
        if all(len(set(types)) == 1 for types in self.text_types.values()):
            fields["text_types_by_step"] = {str(s): types[0] for s, types in self.text_types.items()}
        return fields

    def add(self, samples: int, data_s: float, compute_s: float, loss: float) -> None:
        self.samples += samples
        self.data_s += data_s
        self.compute_s += compute_s
        self.loss_sum += loss
        self.steps += 1

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.steps

    def samples_per_s(self) -> float:
        return self.samples / (time.perf_counter() - self.started)


def mean_across_ranks(value: float) -> float:
    """The mean of `value` over all processes (`value` itself in a single process). A
    collective: every rank must call it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
