"""The demo's stages: synthesise, train each (text type, seed), evaluate, predict a few
examples, write the report (`run_demo`). See `treeclip.demo` for how stages resume."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from treeclip.cache import CachePaths
from treeclip.demo.parallel import job_slots, run_parallel, training_status
from treeclip.demo.profiles import (DEFAULT_QUERY, HALF_SPECIES, PROFILES, QUERY_TYPES, TASKS, DemoProfile,
                                    objective_of, query_text, trained_variants, variant_of)
from treeclip.demo.report import write_report
from treeclip.identity import RunIdentity
from treeclip.log import get_logger
from treeclip.runtime.options import InferenceOptions

log = get_logger(__name__)


def _say(msg: str) -> None:
    log.info(f"[demo {time.strftime('%H:%M:%S')}] {msg}")


def _synthesize(profile: DemoProfile, data_dir: Path, *, half_species: bool = False) -> dict:
    """The synthetic tree of life; `half_species`: the data-diversity ablation's other
    training set (the same species and roles, half the seen species with twice the
    images each, so as many training images in all)."""
    from treeclip.data.synth import SynthConfig, synthesize

    cfg = SynthConfig(species=profile.species, images_per_species=profile.images_per_species * (2 if half_species else 1),
                      eval_images_per_species=profile.eval_images_per_species, image_size=64,
                      train_species_fraction=0.5 if half_species else 1.0, seed=0, workers=min(2, os.cpu_count() or 1))
    return synthesize(data_dir, cfg, progress=True)


# -- what made each stage's output ---------------------------------------------------------
STAGE_RECORD = "demo-stage.json"


def _stage_identity(stage_dir: Path, settings: dict) -> RunIdentity:
    """What a stage's outputs in `stage_dir` are a function of (its record, `STAGE_RECORD`)."""
    return RunIdentity(stage_dir / STAGE_RECORD, settings, key="settings")


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _data_identity(synth: dict) -> dict:
    """What the synthetic data is a function of (its generator settings and name table)."""
    return {"config": synth.get("config"), "table_sha256": synth.get("table_sha256")}


@dataclass
class TrainingJob:
    """One (text type, seed) model: its run dir, its config and whether it must be trained."""

    label: str
    run_dir: Path
    config: dict
    settings: dict
    todo: bool

    @property
    def model_dir(self) -> Path:
        """The best checkpoint on the seen-species validation split, else the last."""
        best = self.run_dir / "best"
        return best if (best / "open_clip_model.safetensors").exists() else self.run_dir / "model"


def _training_job(profile: DemoProfile, data_dir: Path, data: dict, run_dir: Path, variant: str, seed: int,
                  threads: int) -> TrainingJob:
    """The job of one (variant, seed) model. A model already trained with the same
    settings is kept; one trained with other settings is removed and trained again; an
    interrupted one is resumed."""
    from treeclip.train import make_config

    query, objective = query_text(variant), objective_of(variant)
    cfg = make_config(preset="cpu-demo", data=str(data_dir), out=str(run_dir), model=profile.model,
                      seed=seed, steps=profile.steps, batch_size=profile.batch_size, lr=profile.lr,
                      warmup=profile.warmup, objective=objective, save_every=max(profile.steps // 4, 1),
                      # a classifier has no text: its text type is moot
                      text_type="com" if objective != "clip" else "mixed" if variant == HALF_SPECIES else variant,
                      val_every=max(profile.steps // profile.val_points, 1), threads=threads, progress=False,
                      # exact (tests/test_train.py): fewer embedding rows to update, no decode per step
                      compact_vocab=objective == "clip", cache_images=True,
                      # the best checkpoint is chosen with the query the evaluation uses for this model
                      val_text_type="taxon_com" if query == DEFAULT_QUERY else query,
                      label_set=False)  # the demo's predict stage classifies over every task species
    settings = {**{k: v for k, v in cfg.as_dict().items() if k not in ("data", "out", "progress")}, "data": data}
    identity = _stage_identity(run_dir, settings)
    same = identity.matches()
    todo = not same or not (run_dir / "model" / "open_clip_model.safetensors").exists()
    if todo:
        if not same and run_dir.exists():
            changes = identity.changes_in_words() or ["no record of its settings"]
            _say(f"{run_dir.name}: trained with other settings ({'; '.join(changes)}); training it again")
            shutil.rmtree(run_dir)
        identity.write()
    return TrainingJob(f"{variant}-s{seed}", run_dir, cfg.as_dict(), settings, todo)


def _train_job(config: dict) -> dict:
    """Train one model (in a job process); its summary."""
    from treeclip.train import make_config, train

    return train(make_config(**config), resume="latest")


def _train_all(profile: DemoProfile, data: dict[str, tuple[Path, dict]], out: Path) -> list[TrainingJob]:
    """Every (variant, seed) model, the ones not yet trained side by side (one
    single-thread process per core). `data`: the training set (dir, identity) of each
    variant (the data-diversity arm has its own)."""
    labels = [(v, s) for v in trained_variants(profile) for s in profile.seeds]
    _, threads = job_slots(len(labels), profile.parallel)  # from all jobs: a model's settings stay put on resume
    jobs = [_training_job(profile, *data.get(v, data["all"]), out / "train" / f"{v}-s{s}", v, s, threads)
            for v, s in labels]
    todo = [j for j in jobs if j.todo]
    if todo:
        procs, _ = job_slots(len(todo), profile.parallel)
        _say(f"training {len(todo)} model(s), {profile.steps} steps each, {procs} at a time "
             f"({threads} thread(s) each): {', '.join(j.label for j in todo)}")
        run_parallel(_train_job, [j.config for j in todo], processes=procs, threads=threads,
                     names=[j.label for j in todo], say=_say,
                     status=lambda cfg: training_status(cfg["out"], profile.steps))
    return jobs


def _link(target: Path, link: Path) -> Path:
    """A stable, readable name for a model dir (the evaluation labels rows by dir name)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return link
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
    return link


def _eval_config(profile: DemoProfile, out: Path, **changes: Any):
    from treeclip.evaluate.runner import EvalConfig

    # the cache sits inside OUT, so a fresh OUT is evaluated from scratch
    # figures: one task, t-SNE panels of the first seed's models; no silhouettes (the report
    # reads the 5-NN accuracy and the common-rank depth)
    inference = InferenceOptions.for_verb("eval", batch_size=256, workers=0, templates=profile.templates)
    cfg = EvalConfig(shots=(0, 1, 5), text_types=(DEFAULT_QUERY,), tsne_points=profile.tsne_points,
                     inference=inference, caches=CachePaths.default(out / "cache"), progress=False,
                     silhouette=False, figure_tasks=("synth-unseen",),
                     figure_models=tuple(f"{v}-s{profile.seeds[0]}" for v in profile.variants))
    return replace(cfg, **changes)


def _own_queries(models: dict[Path, dict]) -> dict[str, tuple[str, ...]]:
    """Each model's zero-shot query text type (`profiles.query_text`), by model spec."""
    return {str(m): (query_text(variant_of(m.name)),) for m in models}


def _warm_job(job: tuple[str, list[str], Any]) -> None:
    """Fill the evaluation caches of one model (in a job process)."""
    from treeclip.evaluate.runner import warm_caches

    model_dir, task_refs, cfg = job
    warm_caches(model_dir, task_refs, cfg)


def _evaluate(profile: DemoProfile, tasks: list[str], models: dict[Path, dict], out: Path, cfg,
              text_types: dict[str, tuple[str, ...]]) -> dict:
    """Evaluate `models` ({model dir: the settings that trained it}) on `tasks` (each
    model queried with its `text_types`), unless `out` holds the results of these very
    models, tasks and settings. The encoding (image features, class embeddings) runs
    first, one process per core."""
    from treeclip.evaluate.runner import run_evaluation

    settings = {"eval": cfg.record(),
                "tasks": tasks, "text_types": text_types,
                "models": [[str(m), _digest(trained)] for m, trained in models.items()]}
    results_path, identity = out / "results.json", _stage_identity(out, settings)
    if results_path.exists() and identity.matches():
        return json.loads(results_path.read_text(encoding="utf-8"))
    identity.forget()  # the record vouches for finished results only
    procs, threads = job_slots(len(models), profile.parallel)
    cpu = cfg.inference.replace(device="cpu")
    configs = {m: replace(cfg, inference=cpu, text_types=text_types[str(m)]) for m in models}
    run_parallel(_warm_job, [(str(m), tasks, configs[m]) for m in models], processes=procs, threads=threads,
                 names=[f"encoding for {m.name}" for m in models], say=_say)
    _say(f"scoring {', '.join(Path(t).name for t in tasks)}")
    results = run_evaluation([str(m) for m in models], tasks, cfg, out, text_types=text_types)
    identity.write()
    return results


def _text_type_table(profile: DemoProfile, data_dir: Path, models: dict[Path, dict], out: Path) -> dict | None:
    """The paper's text-type table: every CLIP model queried with every text type on unseen
    species (`--long`); None when the profile does not run it."""
    clip = {m: t for m, t in models.items() if objective_of(variant_of(m.name)) == "clip"
            and variant_of(m.name) != HALF_SPECIES}
    if not profile.text_type_table or not clip:
        return None
    _say("the text-type table: every CLIP model queried with every text type on unseen species")
    cfg = _eval_config(profile, out.parent, shots=(0,), intrinsic=False)
    return _evaluate(profile, [str(data_dir / "tasks" / "synth-unseen")], clip, out, cfg,
                     {str(m): QUERY_TYPES for m in clip})


def _predict_examples(model_dir: Path, data_dir: Path, n: int = 6) -> list[dict]:
    """Top-3 species and the roll-up answer for a few unseen-species images, classified
    over every species of the synthetic tree (seen and unseen)."""
    from treeclip.evaluate.tasks import load_task
    from treeclip.predict import TreeOfLifeClassifier

    tasks = {name: load_task(str(data_dir / "tasks" / name)) for name in TASKS}
    taxa = list(dict.fromkeys(t for task in tasks.values() for t in task.taxa if t is not None))
    unseen = tasks["synth-unseen"]
    first_of_class = {}
    for i, label in enumerate(unseen.labels.tolist()):
        first_of_class.setdefault(label, i)
    firsts = list(first_of_class.values())
    picked = firsts[:: max(len(firsts) // n, 1)][:n]  # one image each of species spread over the set
    paths = [str(unseen.image_path(i)) for i in picked]
    clf = TreeOfLifeClassifier(str(model_dir), taxa=taxa, caches=CachePaths.default(model_dir.parent / "label-cache"))
    examples: list[dict] = []
    start = 0
    for batch, probs, ok, _errors in clf.encoded_batches(paths):  # each image encoded once
        if probs is not None:  # top-3 and roll-up from the same probabilities
            tops, rolls = clf.rows_for(probs, rank="species", k=3), clf.rows_for(probs, rollup=0.5)
            examples += [_example(unseen, picked[start + pos], top, roll) for pos, top, (roll,) in zip(ok, tops, rolls)]
        start += len(batch)
    return examples


def _example(task, i: int, top: list[dict], roll: dict) -> dict:
    """One row of the report's predict table: image `i` of `task`, its truth and answers."""
    truth, rank = task.taxa[i], roll.get("rank", "unknown")
    return {"image": Path(task.paths[i]).name, "truth": truth.scientific_name, "truth_common": truth.common_name,
            "top3": [(g["species"], g.get("common_name", ""), g["score"]) for g in top],
            "rollup": (rank, roll.get(rank, ""), roll["score"])}


def run_demo(out_dir: str | os.PathLike = "runs/demo", profile: str | DemoProfile = "default",
             **overrides: Any) -> Path:
    """Run the whole demo; returns the path of `report.md`. `overrides` replace profile
    fields (e.g. `steps=100`, `seeds=(0,)`). The wall time of each stage goes into the
    report (stages an earlier invocation finished take ~0 s)."""
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    prof = replace(prof, **{k: v for k, v in overrides.items() if v is not None})
    out = Path(out_dir)
    data_dir = out / "data"
    clock = _StageClock()
    _say(f"profile {prof.name}: synthesising the tree of life into {data_dir}")
    with clock("synth"):
        synth = _synthesize(prof, data_dir)
        data = {"all": (data_dir, _data_identity(synth))}
        if prof.diversity:
            half = out / "data-half-species"
            data[HALF_SPECIES] = (half, _data_identity(_synthesize(prof, half, half_species=True)))
    with clock("training"):
        jobs = _train_all(prof, data, out)
        models = {_link(j.model_dir, out / "models" / j.label): j.settings for j in jobs}
    _say("evaluating every model on seen species, unseen species and unseen genera")
    with clock("evaluation"):
        results = _evaluate(prof, [str(data_dir / "tasks" / t) for t in TASKS], models, out / "eval",
                            _eval_config(prof, out), _own_queries(models))
        text_types = _text_type_table(prof, data_dir, models, out / "eval-text-types")
    showcase = next((m for m in models if "mixed" in m.name), next(iter(models)))
    _say(f"predicting a few unseen-species images with {showcase.name}")
    with clock("predict"):
        examples = _predict_examples(showcase, data_dir)
    report = write_report(out, prof, synth, results, examples, clock.seconds, _throughput(jobs), text_types)
    _say(f"done in {clock.total() / 60:.1f} min ({clock.describe()}): {report}")
    return report


class _StageClock:
    """Wall seconds per stage: `with clock("training"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = time.perf_counter() - t0

    def total(self) -> float:
        return time.perf_counter() - self._started

    def describe(self) -> str:
        return ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())


def _throughput(jobs: list[TrainingJob]) -> dict[str, float]:
    """Steady training samples/s of each model (train lines after the first), from its metrics."""
    out: dict[str, float] = {}
    for job in jobs:
        try:
            rows = [json.loads(x) for x in (job.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        except (OSError, ValueError):
            continue
        rates = [r["samples_per_s"] for r in rows if r.get("type") == "train"][1:]
        if rates:
            out[job.label] = statistics.median(rates)
    return out
