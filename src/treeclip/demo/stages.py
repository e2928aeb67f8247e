"""The demo's stages: synthesise, train each (text type, seed), evaluate, predict a few
examples, write the report (`run_demo`). See `treeclip.demo` for how stages resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from treeclip.demo.profiles import PROFILES, TASKS, DemoProfile
from treeclip.demo.report import write_report
from treeclip.fsutil import write_json_atomic


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _synthesize(profile: DemoProfile, data_dir: Path) -> dict:
    from treeclip.data.synth import SynthConfig, synthesize

    cfg = SynthConfig(species=profile.species, images_per_species=profile.images_per_species,
                      eval_images_per_species=profile.eval_images_per_species, image_size=64,
                      seed=0, workers=min(2, os.cpu_count() or 1))
    return synthesize(data_dir, cfg, progress=True)


# -- what made each stage's output ---------------------------------------------------------
STAGE_RECORD = "demo-stage.json"


def _changes(stage_dir: Path, settings: dict) -> list[str] | None:
    """None when `stage_dir` records exactly `settings`; else what differs, in words."""
    try:
        old = json.loads((stage_dir / STAGE_RECORD).read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["no record of its settings"]
    new = json.loads(json.dumps(settings))  # tuples -> lists, as the record holds them
    if old == new:
        return None
    keys = sorted(set(old) | set(new), key=str)
    return [k if isinstance(old.get(k), dict) else f"{k} {old.get(k)} -> {new.get(k)}"
            for k in keys if old.get(k) != new.get(k)]


def _record(stage_dir: Path, settings: dict) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage_dir / STAGE_RECORD, {"settings": settings})


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _data_identity(synth: dict) -> dict:
    """What the synthetic data is a function of (its generator settings and name table)."""
    return {"config": synth.get("config"), "table_sha256": synth.get("table_sha256")}


def _train(profile: DemoProfile, data_dir: Path, run_dir: Path, variant: str, seed: int,
           data: dict) -> tuple[Path, dict]:
    """Train one (variant, seed) model unless it is already done with the same settings
    (retrained from scratch when they changed; resumed when it was interrupted). Returns
    its model dir (the best checkpoint on the seen-species validation split, else the
    last) and the settings that made it."""
    from treeclip.train import make_config, train

    cfg = make_config(preset="cpu-demo", data=str(data_dir), out=str(run_dir), model=profile.model,
                      seed=seed, steps=profile.steps, batch_size=profile.batch_size, lr=profile.lr,
                      warmup=profile.warmup, text_type=variant, save_every=max(profile.steps // 4, 1),
                      val_every=max(profile.steps // 4, 1))
    settings = {**{k: v for k, v in cfg.as_dict().items() if k not in ("data", "out", "progress")}, "data": data}
    changes = _changes(run_dir, settings)
    if changes is not None or not (run_dir / "model" / "open_clip_model.safetensors").exists():
        if changes is not None and run_dir.exists():
            _say(f"{run_dir.name}: trained with other settings ({'; '.join(changes)}); training it again")
            shutil.rmtree(run_dir)
        _record(run_dir, settings)
        train(cfg, resume="latest")
    best = run_dir / "best"
    return (best if (best / "open_clip_model.safetensors").exists() else run_dir / "model"), settings


def _link(target: Path, link: Path) -> Path:
    """A stable, readable name for a model dir (the evaluation labels rows by dir name)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return link
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
    return link


def _evaluate(profile: DemoProfile, data_dir: Path, models: dict[Path, dict], out: Path) -> dict:
    """Evaluate `models` ({model dir: the settings that trained it}) on the three tasks,
    unless `out` holds the results of these very models, tasks and settings."""
    from treeclip.evaluate.runner import EvalConfig, run_evaluation

    cfg = EvalConfig(shots=(0, 1, 5), tsne_points=profile.tsne_points, batch_size=256)
    tasks = [str(data_dir / "tasks" / t) for t in TASKS]
    settings = {"eval": {k: v for k, v in asdict(cfg).items() if k != "progress"}, "tasks": tasks,
                "models": [[str(m), _digest(trained)] for m, trained in models.items()]}
    results_path = out / "results.json"
    if results_path.exists() and _changes(out, settings) is None:
        return json.loads(results_path.read_text(encoding="utf-8"))
    (out / STAGE_RECORD).unlink(missing_ok=True)  # the record vouches for finished results only
    results = run_evaluation([str(m) for m in models], tasks, cfg, out)
    _record(out, settings)
    return results


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
    clf = TreeOfLifeClassifier(str(model_dir), taxa=taxa, cache_dir=str(model_dir.parent / "label-cache"))
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
    fields (e.g. `steps=100`, `seeds=(0,)`)."""
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    prof = replace(prof, **{k: v for k, v in overrides.items() if v is not None})
    out = Path(out_dir)
    started = time.perf_counter()
    data_dir = out / "data"
    _say(f"profile {prof.name}: synthesising the tree of life into {data_dir}")
    synth = _synthesize(prof, data_dir)
    models: dict[Path, dict] = {}
    for variant in prof.variants:
        for seed in prof.seeds:
            _say(f"training {variant} (seed {seed}), {prof.steps} steps")
            model_dir, trained = _train(prof, data_dir, out / "train" / f"{variant}-s{seed}", variant, seed,
                                        _data_identity(synth))
            models[_link(model_dir, out / "models" / f"{variant}-s{seed}")] = trained
    _say("evaluating every model on seen species, unseen species and unseen genera")
    results = _evaluate(prof, data_dir, models, out / "eval")
    showcase = next((m for m in models if "mixed" in m.name), next(iter(models)))
    _say(f"predicting a few unseen-species images with {showcase.name}")
    examples = _predict_examples(showcase, data_dir)
    report = write_report(out, prof, synth, results, examples, time.perf_counter() - started)
    _say(f"done in {(time.perf_counter() - started) / 60:.1f} min: {report}")
    return report
