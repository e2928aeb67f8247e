"""`synthesize`: species and roles, rendering jobs spread over worker processes, and the
output (the training dataset dir, the evaluation task folders, `synth.json`)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from treeclip.data.synth.config import TASKS, SynthConfig
from treeclip.data.synth.look import look_of
from treeclip.data.synth.render import encode_pixels, render_stream
from treeclip.data.synth.splits import ROLES, Species, assign_roles, load_species, select_species
from treeclip.data.synth.writer import TaskWriter, species_key
from treeclip.data.synth_names import TABLE_PATH
from treeclip.errors import TreeclipError
from treeclip.fsutil import write_json_atomic
from treeclip.log import progress_bar
from treeclip.taxonomy.taxon import RANKS, Taxon


# -- jobs: one species, one role, rendered in a worker -----------------------------------
@dataclass
class _Job:
    index: int
    species: Species
    role: str
    n_train: int
    n_eval: int
    size: int
    seed: int
    quality: int


@dataclass
class _Rendered:
    index: int
    train: list[tuple[bytes, str, str]] = field(default_factory=list)  # (jpeg, sha256, phash)
    eval: list[bytes] = field(default_factory=list)


def _rng(seed: int, taxon: Taxon, stream: int) -> np.random.Generator:
    # Each species and stream gets its own generator: output independent of worker count.
    return np.random.default_rng([seed, zlib.crc32(taxon.taxonomic_name.encode("utf-8")), stream])


def _render_job(job: _Job) -> _Rendered:
    from treeclip.data.dataset import stored_image_hashes

    look = look_of(job.species.taxon, job.species.meaning)
    out = _Rendered(job.index)
    for px in render_stream(look, job.n_train, job.size, _rng(job.seed, job.species.taxon, 0)):
        jpeg = encode_pixels(px, job.quality)
        h = stored_image_hashes(jpeg)
        out.train.append((jpeg, h["sha256"], h["phash"]))
    stream = 1 if job.role == "seen" else 2
    for px in render_stream(look, job.n_eval, job.size, _rng(job.seed, job.species.taxon, stream)):
        out.eval.append(encode_pixels(px, job.quality))
    return out


def _run_jobs(jobs: list[_Job], workers: int) -> Iterator[_Rendered]:
    """Render jobs in order (imap keeps it), in `workers` processes."""
    if workers <= 1:
        yield from map(_render_job, jobs)
        return
    import multiprocessing as mp

    with mp.get_context("fork" if sys.platform != "win32" else "spawn").Pool(workers) as pool:
        yield from pool.imap(_render_job, jobs, chunksize=1)


# -- the run ----------------------------------------------------------------------------
def _table_digest() -> str:
    return hashlib.sha256(TABLE_PATH.read_bytes()).hexdigest()


def _settings(config: SynthConfig) -> dict:
    """The options the output depends on (all but the worker count)."""
    return {k: v for k, v in asdict(config).items() if k != "workers"}


def _finished(out: Path, settings: dict) -> dict | None:
    """The summary of a finished output made with these settings and this table, else None."""
    summary_path = out / "synth.json"
    if not (summary_path.exists() and (out / "manifest.json").exists()):
        return None
    try:
        done = json.loads(summary_path.read_text(encoding="utf-8"))
    except ValueError:
        done = {}
    complete = all(t["path"] is None or (out / t["path"] / "task.toml").exists()
                   for t in done.get("tasks", {}).values())
    if done.get("config") == settings and done.get("table_sha256") == _table_digest() and complete:
        return done
    return None


def _plan(config: SynthConfig) -> tuple[list[Species], dict[Taxon, str], list[_Job]]:
    """The species (seeded selection), their roles and one rendering job each."""
    rng = np.random.default_rng(config.seed)
    species = select_species(load_species(), config.species, rng)
    roles = assign_roles(species, config, rng)
    if not any(roles[sp.taxon] == "seen" for sp in species):
        raise TreeclipError("synth: no species left for training; lower the unseen fractions or raise --species")
    trained = _trained_species(species, roles, config)
    jobs = [_Job(i, sp, roles[sp.taxon], config.images_per_species if sp.taxon in trained else 0,
                 config.eval_images_per_species, config.image_size, config.seed, config.jpeg_quality)
            for i, sp in enumerate(species)]
    return species, roles, jobs


def _trained_species(species: list[Species], roles: dict[Taxon, str], config: SynthConfig) -> set[Taxon]:
    """The seen species whose images go into the training set: all of them, or a seeded
    `train_species_fraction` of them (drawn apart from the roles, which stay as they are)."""
    seen = [sp.taxon for sp in species if roles[sp.taxon] == "seen"]
    if config.train_species_fraction >= 1.0:
        return set(seen)
    keep = max(1, round(config.train_species_fraction * len(seen)))
    order = np.random.default_rng([config.seed, 1]).permutation(len(seen))
    return {seen[i] for i in order[:keep]}


def _samples(jobs: list[_Job], config: SynthConfig, writers: dict[str, TaskWriter], bar) -> Iterator:
    """The training samples, in job order; each job's evaluation images go to its task."""
    from treeclip.data.dataset import Sample

    n_val = int(round(config.val_fraction * config.images_per_species))
    for done in _run_jobs(jobs, config.workers):
        job = jobs[done.index]
        sp = job.species
        writers[job.role].add(sp.taxon, done.eval)
        stem = species_key(sp.taxon)
        for i, (jpeg, sha, ph) in enumerate(done.train):
            split = "val" if i >= config.images_per_species - n_val else "train"
            yield Sample(f"{stem}_{i:04d}", jpeg, sp.taxon, split, source="synth",
                         source_id=f"ncbi:{sp.ncbi_taxid}", extra={"sha256": sha, "phash": ph})
        bar.update(len(done.train) + len(done.eval))


def _summary(settings: dict, species: list[Species], roles: dict[Taxon, str], manifest: dict,
             tasks: dict) -> dict:
    return {
        "config": settings,
        "table_sha256": _table_digest(),
        "species": len(species),
        "kingdoms": sorted({sp.taxon.kingdom for sp in species}),
        "taxa_per_rank": {r: len({sp.taxon.lineage[: i + 1] for sp in species}) for i, r in enumerate(RANKS)},
        "roles": {r: sum(1 for x in roles.values() if x == r) for r in ROLES},
        "unseen_genera": len({sp.taxon.genus for sp in species if roles[sp.taxon] == "unseen_genus"}),
        "dataset": {s: manifest["splits"][s]["n_samples"] for s in manifest["splits"]},
        "tasks": tasks,
    }


def synthesize(out_dir: str | os.PathLike, config: SynthConfig = SynthConfig(), *, progress: bool = False) -> dict:
    """Generate the synthetic tree of life into `out_dir` and return a summary.

    `out_dir` becomes a dataset dir (train/val shards of the seen species) plus
    `tasks/synth-seen`, `tasks/synth-unseen`, `tasks/synth-unseen-genus` (task folders)
    and `synth.json` (the summary). A finished output with the same config and table is
    kept as it is (the summary is returned); anything else is regenerated.
    """
    from treeclip.data.dataset import write_dataset

    config.check()
    out = Path(out_dir)
    settings = _settings(config)
    done = _finished(out, settings)
    if done is not None:
        return {**done, "skipped": True}
    # synth.json vouches for a finished output: drop it first, so a run killed halfway
    # never leaves it describing files that are no longer what it says.
    (out / "synth.json").unlink(missing_ok=True)
    started = time.perf_counter()
    species, roles, jobs = _plan(config)
    writers = {role: TaskWriter(out / "tasks", role) for role in TASKS}
    bar = progress_bar(sum(j.n_train + j.n_eval for j in jobs), desc="synth", enabled=progress)
    build_info = {"generator": "treeclip.data.synth", "config": settings, "table": TABLE_PATH.name,
                  "table_sha256": _table_digest()}
    try:
        manifest = write_dataset(_samples(jobs, config, writers, bar), out,
                                 taxa=[j.species.taxon for j in jobs if j.n_train],
                                 build_info=build_info)
    finally:
        bar.close()
    tasks = {TASKS[role][0]: w.close() for role, w in writers.items()}
    for t in tasks.values():
        t["path"] = t["path"] and os.path.relpath(t["path"], out)
    summary = _summary(settings, species, roles, manifest, tasks)
    write_json_atomic(out / "synth.json", summary)
    seconds = time.perf_counter() - started
    n_images = sum(summary["dataset"].values()) + sum(t["images"] for t in tasks.values())
    return {**summary, "seconds": seconds, "images_per_second": n_images / max(seconds, 1e-9)}
