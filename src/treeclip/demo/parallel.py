"""Running the demo's independent jobs (one model's training, one model's evaluation
features) side by side: single-thread processes, one per core. Small models use two
cores far better as two one-thread processes than as one two-thread process (their
matrices are too small to split well), so the demo's models train in pairs."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Sequence


def job_slots(n_jobs: int, parallel: int = 0) -> tuple[int, int]:
    """(processes, torch threads per process) for `n_jobs` jobs: one process per core
    unless `parallel` says otherwise, the cores shared out as threads."""
    cores = os.cpu_count() or 1
    procs = max(1, min(n_jobs, parallel or cores))
    return procs, max(1, cores // procs)


def _init_child(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    from treeclip.log import configure_cli

    torch.set_num_threads(threads)
    configure_cli()  # a job's messages reach the terminal as the parent's do


def run_parallel(fn: Callable[[Any], Any], jobs: Sequence[Any], *, processes: int, threads: int,
                 names: Sequence[str], say: Callable[[str], None], status: Callable[[Any], str] | None = None,
                 poll_s: float = 30.0) -> list[Any]:
    """`fn(job)` for every job, `processes` at a time in fresh (spawned) processes of
    `threads` torch threads each; results in job order. Every `poll_s` seconds
    `status(job)` of the running jobs is printed (e.g. a training run's step). An
    exception in a job is raised here once the others have stopped."""
    if not jobs:
        return []
    if processes <= 1:
        _init_child(threads)
        return [_timed(fn, job, name, say) for job, name in zip(jobs, names)]
    ctx = multiprocessing.get_context("spawn")  # no forked copy of this process's threads and torch state
    results: list[Any] = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx, initializer=_init_child,
                             initargs=(threads,)) as pool:
        started = time.perf_counter()
        pending: dict[Future, int] = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = wait(pending, timeout=poll_s, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                results[i] = fut.result()  # re-raises the job's exception; the pool then shuts down
                say(f"{names[i]}: done ({time.perf_counter() - started:.0f} s since these jobs started)")
            if not done and status is not None:
                say("; ".join(f"{names[i]} {status(jobs[i])}" for i in sorted(pending.values())))
    return results


def _timed(fn: Callable[[Any], Any], job: Any, name: str, say: Callable[[str], None]) -> Any:
    started = time.perf_counter()
    result = fn(job)
    say(f"{name}: done in {time.perf_counter() - started:.0f} s")
    return result


def training_status(run_dir: str | Path, total_steps: int) -> str:
    """`step N/TOTAL, S samples/s` from a run's metrics.jsonl (what a job's poll prints)."""
    try:
        lines = Path(run_dir, "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return "waiting"
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "train":
            return f"step {rec['step']}/{total_steps} ({rec.get('samples_per_s', 0):.0f} samples/s)"
    return "waiting"
