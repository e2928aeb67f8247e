"""One evaluation run: several models x several tasks x the chosen settings, as
`treeclip eval` does it. Each model is loaded once, each task's images are encoded once
per model (features cached on disk), and every setting reuses those features."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from treeclip.evaluate import fewshot, intrinsic, linear_probe, report, zeroshot
from treeclip.evaluate.features import image_features, text_embeddings
from treeclip.evaluate.tasks import Task, describe, load_task
from treeclip.runtime.precision import VERB_DEFAULTS

DEFAULT_TEXT = "default"
"""Text-type key meaning: each task's own default (taxon_com for taxonomic classes)."""


@dataclass
class EvalConfig:
    """What to measure; see `treeclip eval --help` for each option."""

    shots: tuple[int, ...] = (0, 1, 5)
    text_types: tuple[str, ...] = (DEFAULT_TEXT,)
    templates: str = "bioclip"
    seeds: tuple[int, ...] = fewshot.DEFAULT_SEEDS
    linear_probe: bool = False
    intrinsic: bool = True
    tsne_points: int = 1500
    tsne_perplexity: float = 30.0
    batch_size: int = 64
    workers: int = 0
    device: str = "cpu"
    precision: str = VERB_DEFAULTS["eval"]
    cache_dir: str | None = None       # cache root (features/, labels/); None: $TREECLIP_CACHE
    progress: bool = True


def _log(msg: str, cfg: EvalConfig) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


def model_labels(specs: Sequence[str]) -> list[str]:
    """Short, unique row labels for model specs (the dir or file name, else the spec)."""
    labels = []
    for spec in specs:
        s = spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec
        base = Path(s).name or s
        label, n = base, 2
        while label in labels:
            label, n = f"{base}#{n}", n + 1
        labels.append(label)
    return labels


def class_names(task: Task, text_type: str) -> list[str]:
    t = task.text_type if text_type == DEFAULT_TEXT else text_type
    return [zeroshot.class_text(c.taxon, c.name, t) for c in task.classes]


def _task_features(model, task: Task, cfg: EvalConfig, progress: bool):
    """One task's image features under `model`, from the cache when encoded before."""
    return image_features(model, task, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size, workers=cfg.workers,
                          progress=progress, precision=cfg.precision)


def _class_embeddings(model, task: Task, text_type: str, templates, cfg: EvalConfig, progress: bool) -> np.ndarray:
    """One task's zero-shot class embeddings of `text_type`, from the cache when encoded before."""
    return text_embeddings(model, class_names(task, text_type), templates, cache_dir=cfg.cache_dir, progress=progress)


def warm_caches(spec: str, task_refs: Sequence[str], cfg: EvalConfig) -> None:
    """Encode one model's task images and class names into the caches exactly as
    `run_evaluation` will read them (so several models can be encoded side by side in
    other processes first)."""
    from treeclip.model import load_model

    model = load_model(spec, device=cfg.device)
    templates = _templates(cfg.templates)
    for task in map(load_task, task_refs):
        _task_features(model, task, cfg, progress=False)
        for t in cfg.text_types if 0 in cfg.shots else ():
            _class_embeddings(model, task, t, templates, cfg, progress=False)


def evaluate_task(model, task: Task, feats: np.ndarray, ok: np.ndarray, cfg: EvalConfig, templates) -> dict:
    """Every configured setting for one model on one task's (ok) features."""
    x, y = feats[ok], task.labels[ok]
    out: dict = {"zero_shot": {}, "few_shot": {}}
    if 0 in cfg.shots:
        scale = model.logit_scale()
        for t in cfg.text_types:
            emb = _class_embeddings(model, task, t, templates, cfg, progress=cfg.progress)
            out["zero_shot"][t] = zeroshot.zero_shot_metrics(x, y, emb, scale, [c.taxon for c in task.classes])
    for k in (k for k in cfg.shots if k > 0):
        out["few_shot"][str(k)] = fewshot.few_shot(x, y, k, cfg.seeds)
    if cfg.linear_probe:
        splits = [task.splits[i] for i in np.flatnonzero(ok)]
        split = linear_probe.split_from_column(splits, y)
        out["linear_probe"] = linear_probe.linear_probe(x, y, split=split)
    if cfg.intrinsic and any(t is not None for t in task.taxa):
        out["intrinsic"] = intrinsic.hierarchy_measures(x, [task.taxa[i] for i in np.flatnonzero(ok)])
    return out


@dataclass
class _Kept:
    """What the figures need after every model ran: each task's features per model label
    and which images decoded (the same for every model)."""

    features: dict[str, dict[str, np.ndarray]]
    ok: dict[str, np.ndarray]
    failures: list[str]


def run_evaluation(model_specs: Sequence[str], task_refs: Sequence[str], cfg: EvalConfig,
                   out_dir: str | Path) -> dict:
    """Evaluate, write results.json, report.md and the PNGs to `out_dir`; return the results."""
    from treeclip import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    templates = _templates(cfg.templates)
    tasks = [load_task(ref) for ref in task_refs]  # every spec checked before any encoding
    labels = model_labels(model_specs)
    results: dict = {
        "treeclip_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "models": [], "tasks": [describe(t) for t in tasks],
        "zero_shot": {}, "few_shot": {}, "linear_probe": {}, "intrinsic": {}, "figures": {},
    }
    kept = _Kept({t.name: {} for t in tasks}, {}, [p for task in tasks for p in task.problems])
    for spec, label in zip(model_specs, labels):
        _evaluate_model(spec, label, label == labels[0], tasks, cfg, templates, results, kept)
    if cfg.intrinsic:
        for task in tasks:
            _figures(task, kept, results, cfg, out)
    results["failures"] = {"count": len(kept.failures), "examples": kept.failures[:50]}
    report.write_report(results, out)
    return results


def _templates(name: str) -> list[str]:
    from treeclip.errors import TreeclipError
    from treeclip.taxonomy.templates import load_templates

    try:
        return load_templates(name)
    except ValueError as e:
        raise TreeclipError(str(e)) from None


def _evaluate_model(spec: str, label: str, first: bool, tasks: Sequence[Task], cfg: EvalConfig,
                    templates: Sequence[str], results: dict, kept: _Kept) -> None:
    """One model on every task: its features (cached), every setting, into `results`."""
    import torch

    from treeclip.model import load_model

    model = load_model(spec, device=cfg.device)
    results["models"].append({"spec": spec, "label": label, "name": model.name, "fingerprint": model.fingerprint()})
    for task in tasks:
        _log(f"{label}: {task.name} ({len(task)} images, {task.n_classes} classes)", cfg)
        f = _task_features(model, task, cfg, progress=cfg.progress)
        if first:
            kept.failures += f.errors  # the same images fail for every model: count once
            kept.ok[task.name] = f.ok
        r = evaluate_task(model, task, f.features, f.ok, cfg, templates)
        for t, m in r["zero_shot"].items():
            results["zero_shot"].setdefault(label, {}).setdefault(t, {})[task.name] = m
        for k, m in r["few_shot"].items():
            results["few_shot"].setdefault(label, {}).setdefault(k, {})[task.name] = m
        if "linear_probe" in r:
            results["linear_probe"].setdefault(label, {})[task.name] = r["linear_probe"]
        if "intrinsic" in r:
            results["intrinsic"].setdefault(label, {})[task.name] = r["intrinsic"]
            kept.features[task.name][label] = f.features[f.ok]
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next model gets the whole device


def _figures(task: Task, kept: _Kept, results: dict, cfg: EvalConfig, out: Path) -> None:
    """The t-SNE panels and the hierarchy plot of one task, all models side by side."""
    feats = kept.features[task.name]
    if not feats:
        return
    ok_taxa = [t for t, good in zip(task.taxa, kept.ok[task.name]) if good]
    safe = _file_stem(task.name)
    tsne_png, hier_png = f"tsne-{safe}.png", f"hierarchy-{safe}.png"
    _log(f"t-SNE panels for {task.name}", cfg)
    intrinsic.tsne_figure(feats, ok_taxa, out / tsne_png, max_points=cfg.tsne_points,
                          perplexity=cfg.tsne_perplexity, title=task.name)
    intrinsic.hierarchy_figure({m: results["intrinsic"][m][task.name] for m in feats}, out / hier_png,
                               title=task.name)
    results["figures"][task.name] = [tsne_png, hier_png]


def _file_stem(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip(".") or "task"
