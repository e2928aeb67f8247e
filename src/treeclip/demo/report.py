"""The demo's report: `summary.json` (the numbers per model and seed, read from the
evaluations' results.json files, and the claims checked on them) and `report.md` (the
claims, the paper's ablation tables in miniature, figures, predict examples)."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from treeclip.demo.claims import check_claims, claim_lines, separation
from treeclip.demo.profiles import (CLASSIFIERS, HALF_SPECIES, QUERY_TYPES, TASK_TITLES, TASKS, VARIANT_TITLES,
                                    DemoProfile, query_text, trained_variants)
from treeclip.fsutil import write_json_atomic, write_text_atomic


def _stats(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _fmt(values: Sequence[float]) -> str:
    mean, std = _stats(values)
    if math.isnan(mean):
        return "-"
    per_seed = ", ".join(f"{100 * v:.1f}" for v in values)
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({per_seed})"


def _get(tree: dict, *path: str) -> float:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return float("nan")
        tree = tree[key]
    return float(tree)


def metric(results: dict, label: str, setting: str, task: str, query: str = "default") -> float:
    """One model's number on one task, as results.json holds it: setting "0" is zero-shot
    top-1 with class names of text type `query` (for a classifier: its head's top-1),
    "1"/"5" the k-shot mean accuracy."""
    if setting != "0":
        return _get(results, "few_shot", label, setting, task, "mean")
    if label in results.get("classifier", {}):
        return _get(results, "classifier", label, task, "top1")
    return _get(results, "zero_shot", label, query, task, "top1")


def _per_seed(results: dict, section: str, labels: list[str], path: tuple[str, ...], task: str, key: str) -> dict:
    """{rank: [value per seed]} of results[section][label][*path][task][key] (a per-rank dict)."""
    out: dict = {}
    for lab in labels:
        cell = results.get(section, {}).get(lab, {})
        for p in path:
            cell = cell.get(p, {})
        for rank, value in cell.get(task, {}).get(key, {}).items():
            out.setdefault(rank, []).append(value["knn_accuracy"] if isinstance(value, dict) else value)
    return out


def labels_of(variant: str, profile: DemoProfile) -> list[str]:
    return [f"{variant}-s{s}" for s in profile.seeds]


def summarise(results: dict, profile: DemoProfile, text_types: dict | None = None) -> dict:
    """The numbers the report shows, each a list over seeds, read from `results` (the
    main evaluation) and `text_types` (the text-type table's evaluation, `--long`):
    `table[variant][setting][task]` (setting "0": zero-shot with the model's own query,
    or a classifier's head top-1; "1"/"5": k-shot), zero-shot top-1 at each rank, the
    5-NN accuracy per rank and the nearest neighbour's common-rank depth; the text-type
    table `[training type][query type]` on unseen species; the data-diversity arms; and
    the claims checked on them."""
    table: dict = {}
    zero_shot_ranks: dict = {}
    hierarchy: dict = {}
    lca: dict = {}
    for variant in trained_variants(profile):
        labels, query = labels_of(variant, profile), query_text(variant)
        table[variant] = {setting: {task: [metric(results, lab, setting, task, query) for lab in labels]
                                    for task in TASKS} for setting in ("0", "1", "5")}
        section = ("classifier", ()) if variant in CLASSIFIERS else ("zero_shot", (query,))
        zero_shot_ranks[variant] = {task: _per_seed(results, section[0], labels, section[1], task, "rank_top1")
                                    for task in TASKS}
        hierarchy[variant] = {task: _per_seed(results, "intrinsic", labels, (), task, "ranks") for task in TASKS}
        lca[variant] = {task: [_get(results, "intrinsic", lab, task, "lca_depth") for lab in labels] for task in TASKS}
    summary = {"table": table, "zero_shot_ranks": zero_shot_ranks, "hierarchy": hierarchy, "lca_depth": lca,
               "claims": check_claims(table, profile.variants)}
    if text_types is not None:
        summary["text_type_table"] = {
            v: {q: [metric(text_types, lab, "0", "synth-unseen", q) for lab in labels_of(v, profile)]
                for q in QUERY_TYPES}
            for v in profile.variants if v not in CLASSIFIERS}
    if profile.diversity and "mixed" in profile.variants:
        summary["diversity"] = {
            f"{k}-shot {TASK_TITLES[t]}" if k != "0" else f"zero-shot {TASK_TITLES[t]}":
                separation(table["mixed"][k][t], table[HALF_SPECIES][k][t])
            for k in ("0", "1", "5") for t in ("synth-unseen", "synth-unseen-genus")}
    return summary


def write_report(out: Path, profile: DemoProfile, synth: dict, results: dict, examples: list[dict],
                 stage_seconds: dict[str, float], samples_per_s: dict[str, float] | None = None,
                 text_types: dict | None = None) -> Path:
    """`OUT/summary.json` (the numbers per variant and seed, the claims, the stage times)
    and `OUT/report.md`."""
    summary = summarise(results, profile, text_types)
    timing = {"stage_seconds": stage_seconds, "training_samples_per_s": samples_per_s or {}}
    write_json_atomic(out / "summary.json", {"profile": asdict(profile), **summary, **timing})
    md = (_setup_lines(profile, synth, stage_seconds, samples_per_s or {}) + _claims_section(summary)
          + _accuracy_tables(summary, profile) + _ablation_tables(summary, profile)
          + _rank_tables(summary, profile) + _findings(results) + _predict_lines(examples))
    path = out / "report.md"
    write_text_atomic(path, "\n".join(md))
    return path


def _setup_lines(profile: DemoProfile, synth: dict, stage_seconds: dict[str, float],
                 samples_per_s: dict[str, float]) -> list[str]:
    stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in stage_seconds.items())
    rates = ", ".join(f"{k} {v:.0f}" for k, v in samples_per_s.items())
    templates = ("the training caption's template `a photo of {}.` (the demo's text towers learn from "
                 "scratch on that one template; docs/demo.md measures the paper's 81 against it)"
                 if profile.templates == "single" else f"the `{profile.templates}` templates")
    return [
        "# treeclip demo: BioCLIP's ablations on the synthetic tree of life", "",
        "BioCLIP's claims about its training text and objective, measured on real NCBI names with images "
        "generated from each lineage (`treeclip data synth`).", "",
        "## Setup", "",
        f"- profile `{profile.name}`: {synth.get('species')} species "
        f"({', '.join(f'{k}: {v}' for k, v in synth.get('roles', {}).items())}) in "
        f"{', '.join(synth.get('kingdoms', []))}; training images: {synth.get('dataset', {})}.",
        f"- model `{profile.model}`, {profile.steps} steps of batch {profile.batch_size}, lr {profile.lr}, "
        f"warmup {profile.warmup}; seeds {', '.join(map(str, profile.seeds))}; the model kept is the best "
        "on the seen-species validation split (unseen species are never looked at during training).",
        f"- zero-shot: {templates}, classifying among the species of each set only; a model trained on one text "
        "type is queried with that type (common-name models with common names, as the paper queries its "
        "baselines), mixed-text models with taxonomic + common names (`taxon_com`), as the paper queries "
        "BioCLIP. Classifiers (same image tower, data and steps) have no zero-shot: their seen-species "
        "number is their head's top-1. 1-/5-shot: SimpleShot CL2N, 5 trials.",
        f"- this invocation took {sum(stage_seconds.values()) / 60:.1f} min on {os.cpu_count()} CPU cores "
        f"(minutes per stage: {stages}; stages an earlier invocation completed were reused, not redone)"
        + (f"; training samples/s per model: {rates}." if rates else "."), "",
        "Cells: mean ± standard deviation over seeds (each seed's value), top-1 accuracy in %.", "",
    ]


def _claims_section(summary: dict) -> list[str]:
    rows = summary["claims"]
    held = sum(r["holds"] for r in rows)
    return ["## BioCLIP's claims, checked", "",
            "A comparison holds when the paper's side is ahead in every seed and the mean difference exceeds "
            "twice the pooled standard deviation over seeds. Paper's numbers marked as in BIOCLIP-FACTS 4b "
            "(readers' summaries of the paper). "
            f"{held} of {len(rows)} rows hold.", ""] + claim_lines(rows, VARIANT_TITLES) + [""]


def _accuracy_tables(summary: dict, profile: DemoProfile) -> list[str]:
    md: list[str] = []
    for setting, title in (("0", "Zero-shot (each model queried as the paper does; classifiers: head top-1)"),
                           ("1", "1-shot"), ("5", "5-shot")):
        md += [f"## {title}", "", "| model | " + " | ".join(TASK_TITLES[t] for t in TASKS) + " |",
               "|---|" + "---|" * len(TASKS)]
        for variant in summary["table"]:
            cells = [_fmt(summary["table"][variant][setting][t]) for t in TASKS]
            md.append(f"| {_title(variant)} | " + " | ".join(cells) + " |")
        md.append("")
    return md


def _title(variant: str) -> str:
    if variant == HALF_SPECIES:
        return "mixed per batch, half the seen species with twice the images"
    return VARIANT_TITLES.get(variant, variant)


def _ablation_tables(summary: dict, profile: DemoProfile) -> list[str]:
    md: list[str] = []
    if "text_type_table" in summary:
        md += ["## The text-type table (the paper's layout): zero-shot top-1 on unseen species", "",
               "Rows: the text type used in training; columns: the text type of the class names queried with. "
               "Mean over seeds.", "", "| trained on | " + " | ".join(QUERY_TYPES) + " |",
               "|---|" + "---|" * len(QUERY_TYPES)]
        for variant, per_query in summary["text_type_table"].items():
            md.append(f"| {_title(variant)} | " + " | ".join(
                f"{100 * _stats(per_query[q])[0]:.1f}" for q in QUERY_TYPES) + " |")
        md.append("")
    classifiers = [c for c in CLASSIFIERS if c in summary["table"]]
    if classifiers:
        md += ["## The objective table: few-shot on unseen taxa", "",
               "Same image tower, data and steps; CLIP on text against classification heads. Mean over seeds.", "",
               "| objective | seen species (top-1) | 1-shot unseen species | 5-shot unseen species | "
               "1-shot unseen genera | 5-shot unseen genera |", "|---|---|---|---|---|---|"]
        for variant in [v for v in profile.variants if v not in CLASSIFIERS] + classifiers:
            t = summary["table"][variant]
            cells = [t["0"]["synth-seen"], t["1"]["synth-unseen"], t["5"]["synth-unseen"],
                     t["1"]["synth-unseen-genus"], t["5"]["synth-unseen-genus"]]
            md.append(f"| {_title(variant)} | " + " | ".join(f"{100 * _stats(c)[0]:.1f}" for c in cells) + " |")
        md.append("")
    if "diversity" in summary:
        md += ["## Data diversity: all seen species against half of them with twice the images", "",
               "The same number of training images (mixed text per batch): the paper finds that more taxa beat "
               "more images per taxon. Difference = all species minus half; pooled sd over seeds.", "",
               "| measure | difference | pooled sd | ahead in | holds |", "|---|---|---|---|---|"]
        for measure, s in summary["diversity"].items():
            md.append(f"| {measure} | {100 * s['diff']:+.1f} pts | {100 * s['pooled_std']:.1f} | "
                      f"{s['ahead_in']}/{s['seeds']} | {'**yes**' if s['holds'] else 'no'} |")
        md.append("")
    return md


def _rank_rows(per_variant: dict[str, dict]) -> list[str]:
    """A table row per variant of mean-over-seeds values at each rank ({rank: [per seed]})."""
    from treeclip.taxonomy.taxon import RANKS

    rows = ["| model | " + " | ".join(RANKS) + " |", "|---|" + "---|" * len(RANKS)]
    for variant, per_rank in per_variant.items():
        cells = [(f"{100 * _stats(per_rank[r])[0]:.1f}" if r in per_rank else "-") for r in RANKS]
        rows.append(f"| {_title(variant)} | " + " | ".join(cells) + " |")
    return rows


def _rank_tables(summary: dict, profile: DemoProfile) -> list[str]:
    md: list[str] = []
    clip = [v for v in summary["table"] if v not in CLASSIFIERS]
    for task in ("synth-unseen", "synth-unseen-genus"):
        md += [f"## Zero-shot at each rank, {TASK_TITLES[task]} (top-1 %, mean over seeds)", "",
               "The species predicted among this set's species, scored at each rank of its lineage.", ""]
        md += _rank_rows({v: summary["zero_shot_ranks"][v][task] for v in clip}) + [""]
    for task in ("synth-unseen", "synth-unseen-genus"):
        md += [f"## Does the space follow the tree of life? {TASK_TITLES[task]} (5-NN accuracy per rank, %)", "",
               "A measurement, not a claim: 5-nearest-neighbour vote of image features at each rank; mean over "
               "seeds. Last column: the depth of the lowest rank an image shares with its nearest neighbour "
               "(1 kingdom .. 7 species).", ""]
        rows = _rank_rows({v: summary["hierarchy"][v][task] for v in summary["table"]})
        rows[0], rows[1] = rows[0] + " NN common rank |", rows[1] + "---|"
        for i, variant in enumerate(summary["table"]):
            rows[i + 2] += f" {_stats(summary['lca_depth'][variant][task])[0]:.2f} |"
        md += rows + [""]
    return md


def _findings(results: dict) -> list[str]:
    md = ["## Reading the numbers", "",
          "Read every difference against the spread over seeds: one smaller than twice the pooled standard "
          "deviation is not counted as an effect. A claim that does not hold here is reported as measured; "
          "every comparison is between models trained for minutes on 2 CPU cores. docs/demo.md records what "
          "each profile measured.", "", "## Figures", ""]
    for task in TASKS:
        for png in results.get("figures", {}).get(task, []):
            md.append(f"![{task}](eval/{png})")
    return md


def _predict_lines(examples: list[dict]) -> list[str]:
    md = ["", "## predict on unseen-species images", "",
          "Classified over every species of the synthetic tree (seen and unseen) with the first "
          "mixed-text model; roll-up answers at the deepest rank whose summed probability reaches 0.5.", "",
          "| image | truth | top-3 species | roll-up |", "|---|---|---|---|"]
    for ex in examples:
        top = "; ".join(f"{s} ({100 * p:.0f}%)" for s, _, p in ex["top3"])
        rank, name, p = ex["rollup"]
        answer = f"{rank}: {name}" if name else rank
        md.append(f"| {ex['image']} | {ex['truth']} ({ex['truth_common']}) | {top} | {answer} ({100 * p:.0f}%) |")
    return md + ["", "Full evaluation tables (every model and seed): [eval/report.md](eval/report.md).", ""]
