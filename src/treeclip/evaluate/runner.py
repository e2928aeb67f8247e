"""One evaluation run: several models x several tasks x the chosen settings, as
`treeclip eval` does it. Each model is loaded once, each task's images are encoded once
per model (features cached on disk), and every setting reuses those features."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from treeclip.cache import CachePaths
from treeclip.errors import TreeclipError
from treeclip.evaluate import fewshot, intrinsic, linear_probe, report, zeroshot
from treeclip.evaluate.features import image_features, text_embeddings
from treeclip.evaluate.tasks import Task, describe, load_task
from treeclip.log import get_logger
from treeclip.runtime.options import InferenceOptions

log = get_logger(__name__)

DEFAULT_TEXT = "default"
"""Text-type key meaning: each task's own default (taxon_com for taxonomic classes)."""


def default_eval_options() -> InferenceOptions:
    """Evaluation's defaults: exact fp32, BioCLIP's 81 templates, decoding in this process."""
    return InferenceOptions.for_verb("eval", batch_size=64, workers=0, templates="bioclip")


@dataclass
class EvalConfig:
    """What to measure; see `treeclip eval --help` for each option. `inference`: device,
    precision, batching and templates; `caches`: features/ and labels/ (None: the
    environment's)."""

    shots: tuple[int, ...] = (0, 1, 5)
    text_types: tuple[str, ...] = (DEFAULT_TEXT,)
    seeds: tuple[int, ...] = fewshot.DEFAULT_SEEDS
    linear_probe: bool = False
    intrinsic: bool = True
    tsne_points: int = 1500
    tsne_perplexity: float = 30.0
    silhouette: bool = True            # the per-rank silhouettes of the hierarchy measure (quadratic)
    figure_tasks: tuple[str, ...] | None = None   # tasks that get figures (by name); None: every task
    figure_models: tuple[str, ...] | None = None    # models (by label) in the figures; None: every model
    inference: InferenceOptions = field(default_factory=default_eval_options)
    caches: CachePaths | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.inference.resize != "crop":
            raise TreeclipError("eval encodes images with each model's own preprocess (resize crop)")

    def record(self) -> dict:
        """The settings as results.json records them (the inference options inline)."""
        inference = self.inference
        fields = {k: v for k, v in asdict(self).items() if k not in ("inference", "caches", "progress")}
        return {**fields, "templates": inference.templates, "batch_size": inference.batch_size,
                "workers": inference.workers, "device": inference.device, "precision": inference.precision}


def _log(msg: str, cfg: EvalConfig) -> None:
    if cfg.progress:
        log.info(msg)


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
    return image_features(model, task, options=cfg.inference, caches=cfg.caches, progress=progress)


def _class_embeddings(model, task: Task, text_type: str, templates, cfg: EvalConfig, progress: bool) -> np.ndarray:
    """One task's zero-shot class embeddings of `text_type`, from the cache when encoded before."""
    return text_embeddings(model, class_names(task, text_type), templates, caches=cfg.caches, progress=progress)


def warm_caches(spec: str, task_refs: Sequence[str], cfg: EvalConfig) -> None:
    """Encode one model's task images and class names into the caches exactly as
    `run_evaluation` will read them (so several models can be encoded side by side in
    other processes first)."""
    from treeclip.model import load_model

    model = load_model(spec, device=cfg.inference.device, hub_dir=_hub(cfg))
    templates = cfg.inference.template_texts()
    zero_shot = 0 in cfg.shots and _species_head(spec, _hub(cfg)) is None
    for task in map(load_task, task_refs):
        _task_features(model, task, cfg, progress=False)
        for t in cfg.text_types if zero_shot else ():
            _class_embeddings(model, task, t, templates, cfg, progress=False)


def _species_head(spec: str, hub_dir: Path | None = None):
    """The species head of a model trained with a classification objective, else None."""
    from treeclip.model.heads import has_heads, read_species_head
    from treeclip.model.weights import resolve_source

    path = resolve_source(spec, hub_dir=hub_dir)
    model_dir = path if path.is_dir() else path.parent
    return read_species_head(model_dir) if has_heads(model_dir) else None


def head_metrics(head, task: Task, x: np.ndarray, y: np.ndarray) -> dict | None:
    """A classifier head's metrics on a task, classifying among the task's classes as
    zero-shot does (top-1/3/5, per-class recall, top-1 at each rank); None when the head
    was not trained on every class of the task (unseen taxa)."""
    rows = {t.lineage: i for i, t in enumerate(head.classes)}
    index = [rows.get(c.taxon.lineage) if c.taxon is not None else None for c in task.classes]
    if any(i is None for i in index):
        return None
    return zeroshot.zero_shot_metrics(x, y, head.weights[index], 1.0, [c.taxon for c in task.classes])


def evaluate_task(model, task: Task, feats: np.ndarray, ok: np.ndarray, cfg: EvalConfig, templates,
                  head=None) -> dict:
    """Every configured setting for one model on one task's (ok) features. A model with
    a classifier `head` (a classification objective, whose text tower never trained) gets
    the head's metrics instead of zero-shot."""
    x, y = feats[ok], task.labels[ok]
    out: dict = {"zero_shot": {}, "few_shot": {}}
    if head is not None:
        out["classifier"] = head_metrics(head, task, x, y)
    elif 0 in cfg.shots:
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
        out["intrinsic"] = intrinsic.hierarchy_measures(x, [task.taxa[i] for i in np.flatnonzero(ok)],
                                                        silhouette=cfg.silhouette)
    return out


@dataclass
class _Kept:
    """What the figures need after every model ran: each task's features per model label
    and which images decoded (the same for every model)."""

    features: dict[str, dict[str, np.ndarray]]
    ok: dict[str, np.ndarray]
    failures: list[str]


def run_evaluation(model_specs: Sequence[str], task_refs: Sequence[str], cfg: EvalConfig,
                   out_dir: str | Path, text_types: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Evaluate, write results.json, report.md and the PNGs to `out_dir`; return the results.
    `text_types` gives some models (by spec) their own zero-shot text types instead of
    `cfg.text_types` (e.g. each model queried only as the paper queries it)."""
    from treeclip import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    templates = cfg.inference.template_texts()
    tasks = [load_task(ref) for ref in task_refs]  # every spec checked before any encoding
    labels = model_labels(model_specs)
    results: dict = {
        "treeclip_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {**cfg.record(), "cache_dir": str(cfg.caches.root) if cfg.caches else None},
        "models": [], "tasks": [describe(t) for t in tasks],
        "zero_shot": {}, "few_shot": {}, "classifier": {}, "linear_probe": {}, "intrinsic": {}, "figures": {},
    }
    kept = _Kept({t.name: {} for t in tasks}, {}, [p for task in tasks for p in task.problems])
    for spec, label in zip(model_specs, labels):
        own = replace(cfg, text_types=tuple(text_types[spec])) if text_types and spec in text_types else cfg
        _evaluate_model(spec, label, label == labels[0], tasks, own, templates, results, kept)
    if cfg.intrinsic:
        for task in tasks:
            if cfg.figure_tasks is None or task.name in cfg.figure_tasks:
                _figures(task, kept, results, cfg, out)
    results["failures"] = {"count": len(kept.failures), "examples": kept.failures[:50]}
    report.write_report(results, out)
    return results


def _hub(cfg: EvalConfig):
    return cfg.caches.hub if cfg.caches else None


def _evaluate_model(spec: str, label: str, first: bool, tasks: Sequence[Task], cfg: EvalConfig,
                    templates: Sequence[str], results: dict, kept: _Kept) -> None:
    """One model on every task: its features (cached), every setting, into `results`."""
    import torch

    from treeclip.model import load_model

    model = load_model(spec, device=cfg.inference.device, hub_dir=_hub(cfg))
    head = _species_head(spec, _hub(cfg))
    results["models"].append({"spec": spec, "label": label, "name": model.name, "fingerprint": model.fingerprint(),
                              **({"objective": head.objective} if head is not None else {})})
    for task in tasks:
        _log(f"{label}: {task.name} ({len(task)} images, {task.n_classes} classes)", cfg)
        f = _task_features(model, task, cfg, progress=cfg.progress)
        if first:
            kept.failures += f.errors  # the same images fail for every model: count once
            kept.ok[task.name] = f.ok
        r = evaluate_task(model, task, f.features, f.ok, cfg, templates, head)
        if r.get("classifier") is not None:
            results["classifier"].setdefault(label, {})[task.name] = r["classifier"]
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
    shown = {m: f for m, f in feats.items() if cfg.figure_models is None or m in cfg.figure_models}
    intrinsic.tsne_figure(shown, ok_taxa, out / tsne_png, max_points=cfg.tsne_points,
                          perplexity=cfg.tsne_perplexity, title=task.name)
    intrinsic.hierarchy_figure({m: results["intrinsic"][m][task.name] for m in shown}, out / hier_png,
                               title=task.name)
    results["figures"][task.name] = [tsne_png, hier_png]


def _file_stem(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip(".") or "task"
