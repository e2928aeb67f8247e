"""The demo's report: `summary.json` (the numbers per text type and seed) and
`report.md` (tables, the verdict in sentences, figures, predict examples)."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from treeclip.demo.claims import check_claims, claim_lines
from treeclip.demo.profiles import TASK_TITLES, TASKS, VARIANT_TITLES, DemoProfile, query_text
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


def _metric(results: dict, label: str, setting: str, task: str, query: str = "default") -> float:
    """Top-1 zero-shot (`setting` "0", class names of text type `query`) or k-shot mean
    accuracy of one model on one task."""
    try:
        if setting == "0":
            return results["zero_shot"][label][query][task]["top1"]
        return results["few_shot"][label][setting][task]["mean"]
    except KeyError:
        return float("nan")


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


def summarise(results: dict, profile: DemoProfile) -> dict:
    """{variant: {setting: {task: [value per seed]}}} (zero-shot with each model's own
    query text type, see `profiles.QUERY_TEXT`; "0-taxon_com": every model queried with
    taxon + common names), zero-shot top-1 at each rank, the per-rank 5-NN accuracy and
    the nearest neighbour's lowest-common-rank depth of the hierarchy measure, each as a
    list over seeds; and the claims checked on them."""
    table: dict = {}
    hierarchy: dict = {}
    zero_shot_ranks: dict = {}
    lca: dict = {}
    for variant in profile.variants:
        labels = [f"{variant}-s{s}" for s in profile.seeds]
        query = query_text(variant)
        table[variant] = {setting: {task: [_metric(results, lab, setting, task, query) for lab in labels]
                                    for task in TASKS} for setting in ("0", "1", "5")}
        table[variant]["0-taxon_com"] = {task: [_metric(results, lab, "0", task) for lab in labels] for task in TASKS}
        zero_shot_ranks[variant] = {task: _per_seed(results, "zero_shot", labels, (query,), task, "rank_top1")
                                    for task in TASKS}
        hierarchy[variant] = {task: _per_seed(results, "intrinsic", labels, (), task, "ranks") for task in TASKS}
        lca[variant] = {task: [results.get("intrinsic", {}).get(lab, {}).get(task, {}).get("lca_depth", float("nan"))
                               for lab in labels] for task in TASKS}
    summary = {"table": table, "hierarchy": hierarchy, "zero_shot_ranks": zero_shot_ranks, "lca_depth": lca}
    summary["claims"] = check_claims(summary, profile.variants)
    return summary


def write_report(out: Path, profile: DemoProfile, synth: dict, results: dict, examples: list[dict],
                 stage_seconds: dict[str, float], samples_per_s: dict[str, float] | None = None) -> Path:
    """`OUT/summary.json` (the numbers per variant and seed, the claims, the stage times)
    and `OUT/report.md`."""
    summary = summarise(results, profile)
    timing = {"stage_seconds": stage_seconds, "training_samples_per_s": samples_per_s or {}}
    write_json_atomic(out / "summary.json", {"profile": asdict(profile), **summary, **timing})
    md = (_setup_lines(profile, synth, stage_seconds, samples_per_s or {}) + _claims_section(summary)
          + _accuracy_tables(summary, profile) + _rank_tables(summary, profile) + _findings(results)
          + _predict_lines(examples))
    path = out / "report.md"
    write_text_atomic(path, "\n".join(md))
    return path


def _setup_lines(profile: DemoProfile, synth: dict, stage_seconds: dict[str, float],
                 samples_per_s: dict[str, float]) -> list[str]:
    stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in stage_seconds.items())
    rates = ", ".join(f"{k} {v:.0f}" for k, v in samples_per_s.items())
    return [
        "# treeclip demo: BioCLIP's question on the synthetic tree of life", "",
        "Does training on taxonomic (and mixed) text generalise to species the model has never "
        "seen better than common names alone? Measured here, on real NCBI names with images "
        "generated from each lineage (`treeclip data synth`).", "",
        "## Setup", "",
        f"- profile `{profile.name}`: {synth.get('species')} species "
        f"({', '.join(f'{k}: {v}' for k, v in synth.get('roles', {}).items())}) in "
        f"{', '.join(synth.get('kingdoms', []))}; training images: {synth.get('dataset', {})}.",
        f"- model `{profile.model}`, {profile.steps} steps of batch {profile.batch_size}, lr {profile.lr}, "
        f"warmup {profile.warmup}; seeds {', '.join(map(str, profile.seeds))}; the model kept is the best "
        "on the seen-species validation split (unseen species are never looked at during training).",
        "- zero-shot: the 81 BioCLIP templates, classifying among the species of each set only; each model "
        "is queried as the paper queries it: common-name models with common names, the others with "
        "taxonomic + common names (`taxon_com`; the second zero-shot table queries every model with "
        "`taxon_com`). 1-/5-shot: SimpleShot CL2N, 5 trials.",
        f"- this invocation took {sum(stage_seconds.values()) / 60:.1f} min on {os.cpu_count()} CPU cores "
        f"(minutes per stage: {stages}; stages an earlier invocation completed were reused, not redone)"
        + (f"; training samples/s per model: {rates}." if rates else "."), "",
        "Cells: mean ± standard deviation over seeds (each seed's value), top-1 accuracy in %.", "",
    ]


def _claims_section(summary: dict) -> list[str]:
    rows = summary["claims"]
    held = sum(r["holds"] for r in rows)
    return ["## BioCLIP's claims, checked", "",
            "Each mixed-text variant against common names only; numbers are mean over seeds (each seed). "
            "The bars are this project's: the paper states the claims without thresholds. "
            f"{held} of {len(rows)} rows hold.", ""] + claim_lines(rows, VARIANT_TITLES) + [""]


def _accuracy_tables(summary: dict, profile: DemoProfile) -> list[str]:
    md: list[str] = []
    for setting, title in (("0", "Zero-shot (each model queried as the paper does)"),
                           ("0-taxon_com", "Zero-shot, every model queried with taxon + common names"),
                           ("1", "1-shot"), ("5", "5-shot")):
        md += [f"## {title}", "", "| text type | " + " | ".join(TASK_TITLES[t] for t in TASKS) + " |",
               "|---|" + "---|" * len(TASKS)]
        for variant in profile.variants:
            cells = [_fmt(summary["table"][variant][setting][t]) for t in TASKS]
            md.append(f"| {VARIANT_TITLES.get(variant, variant)} | " + " | ".join(cells) + " |")
        md.append("")
    return md


def _rank_rows(per_variant: dict[str, dict], profile: DemoProfile) -> list[str]:
    """A table row per variant of mean-over-seeds values at each rank ({rank: [per seed]})."""
    from treeclip.taxonomy.taxon import RANKS

    rows = ["| text type | " + " | ".join(RANKS) + " |", "|---|" + "---|" * len(RANKS)]
    for variant in profile.variants:
        per_rank = per_variant[variant]
        cells = [(f"{100 * _stats(per_rank[r])[0]:.1f}" if r in per_rank else "-") for r in RANKS]
        rows.append(f"| {VARIANT_TITLES.get(variant, variant)} | " + " | ".join(cells) + " |")
    return rows


def _rank_tables(summary: dict, profile: DemoProfile) -> list[str]:
    md: list[str] = []
    for task in ("synth-unseen", "synth-unseen-genus"):
        md += [f"## Zero-shot at each rank, {TASK_TITLES[task]} (top-1 %, mean over seeds)", "",
               "The species predicted among this set's species, scored at each rank of its lineage.", ""]
        md += _rank_rows({v: summary["zero_shot_ranks"][v][task] for v in profile.variants}, profile) + [""]
    for task in ("synth-unseen", "synth-unseen-genus"):
        md += [f"## Does the space follow the tree of life? {TASK_TITLES[task]} (5-NN accuracy per rank, %)", "",
               "5-nearest-neighbour vote of image features at each rank; mean over seeds. Last column: the depth "
               "of the lowest rank an image shares with its nearest neighbour (1 kingdom .. 7 species).", ""]
        rows = _rank_rows({v: summary["hierarchy"][v][task] for v in profile.variants}, profile)
        rows[0], rows[1] = rows[0] + " NN common rank |", rows[1] + "---|"
        for i, variant in enumerate(profile.variants):
            rows[i + 2] += f" {_stats(summary['lca_depth'][variant][task])[0]:.2f} |"
        md += rows + [""]
    return md


def _findings(results: dict) -> list[str]:
    md = ["## Reading the numbers", "",
          "Read every difference against the spread over seeds: one smaller than the standard "
          "deviations is not an effect. A claim that does not hold here is reported as measured; "
          "every comparison is between models trained for minutes on 2 CPU cores. `treeclip demo --long` "
          "trains longer and adds per-batch mixing (BioCLIP's way); docs/demo.md records what both "
          "profiles measured.", "", "## Figures", ""]
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
