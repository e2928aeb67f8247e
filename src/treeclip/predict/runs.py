"""What makes a predict or embed run resumable and safe to resume: its identity, and the
split of its inputs over torchrun ranks.

Identity: the model (the fingerprint `treeclip.json` records, else the weights file's
name, size and modification time) plus every option that changes the rows (rank, k,
labels, templates, text type, the precision that runs, ...). It is written beside the
output as `<output>.run.json`; a run that finds a partial output made with another
identity refuses to mix its rows into it (`--overwrite` starts afresh).

Ranks: under torchrun (or srun) the inputs still to do are split into contiguous blocks,
one per rank, in input order; rank r writes `<output>.part-<r>` (itself resumable), and
rank 0 merges every part into the output in input order once all ranks are done, so the
merged output is the single-process output. A rerun with any number of ranks resumes
from the output and the parts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

from treeclip.errors import TreeclipError
from treeclip.identity import RunIdentity

RUN_FORMAT = 1
T = TypeVar("T")


def model_identity(spec: str) -> str:
    """A cheap, stable identity of a model spec, without loading it: the fingerprint a
    model dir's `treeclip.json` records, else the weights file's name, size and mtime,
    else the spec itself (a registered architecture: random weights, seed 0)."""
    from treeclip.model.weights import strip_local_dir, weights_path

    path = strip_local_dir(spec)
    meta = (path if path.is_dir() else path.parent) / "treeclip.json"
    if path.exists() and meta.is_file():
        try:
            return "fingerprint:" + json.loads(meta.read_text(encoding="utf-8"))["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if path.exists():
        weights = weights_path(path)
        st = weights.stat()
        return f"file:{weights.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return f"spec:{spec}"


def file_identity(spec: str | None) -> str | None:
    """A label/taxa/subset spec as identity: a file's content hash, else the spec text."""
    if not spec:
        return spec
    path = Path(spec)
    if path.is_file():
        return f"{spec}:sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    return spec


def identity_path(output: str | os.PathLike) -> Path:
    return Path(f"{output}.run.json")


def check_identity(output: str | os.PathLike, identity: dict[str, Any], *, fresh: bool) -> None:
    """Refuse to resume `output` when it was made with another identity; record ours.
    `fresh`: the output is being started afresh (no rows of an earlier run are kept)."""
    path = identity_path(output)
    record = RunIdentity(path, {"format": RUN_FORMAT, **identity})
    changed = None if fresh else record.changes()
    if changed:
        raise TreeclipError(f"{output}: made by a run with other settings ({', '.join(changed)} differ); "
                            "resuming would mix rows. Give another --output or --overwrite")
    if changed is None and not fresh and Path(output).exists() and Path(output).stat().st_size > 0:
        raise TreeclipError(f"{output}: exists but has no {path.name}, so it cannot be checked before resuming; "
                            "give another --output or --overwrite")
    record.write()


def rank_block(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank `rank`'s contiguous block of `items` (the blocks of all ranks, in rank order,
    are `items`)."""
    n = len(items)
    return list(items[rank * n // world:(rank + 1) * n // world])


def part_path(output: str | os.PathLike, rank: int) -> Path:
    return Path(f"{output}.part-{rank}")


def existing_parts(output: str | os.PathLike) -> list[Path]:
    """Every rank part of `output` left by this or an earlier run, in rank order."""
    out = Path(output)
    found = [p for p in out.parent.glob(f"{out.name}.part-*") if p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]))
