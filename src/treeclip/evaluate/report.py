"""Reports in the paper's layout: one table per setting (zero-shot per text type, k-shot,
linear probe), rows = models, columns = tasks, then the mean over tasks; plus the
hierarchy numbers per rank. Written as `report.md` and `results.json`; the same tables
print to the terminal."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from treeclip.fsutil import write_json_atomic, write_text_atomic
from treeclip.taxonomy.taxon import RANKS


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if len(vals) == len(values) and vals else None


def settings(results: dict, *, extended: bool = False) -> list[tuple[str, str, dict]]:
    """(title, metric key, {row label: {task: cell dict}}) for every table of the report;
    `extended` adds zero-shot top-5 and mean per-class recall."""
    out = []
    zs = results.get("zero_shot", {})
    seen = [t for per_model in zs.values() for t in per_model]
    order = list(results.get("config", {}).get("text_types", []))  # the order the user asked for
    text_types = [t for t in order if t in seen] + sorted(set(seen) - set(order))
    for t in text_types:
        rows = {m: per_model[t] for m, per_model in zs.items() if t in per_model}
        names = f" ({t} names)" if t != "default" else ""
        out.append((f"Zero-shot top-1{names}", "top1", rows))
        if extended:
            out.append((f"Zero-shot top-5{names}", "top5", rows))
            out.append((f"Zero-shot mean per-class recall{names}", "per_class_recall", rows))
    if results.get("classifier"):
        out.append(("Classifier head top-1 (models trained with a classification objective)", "top1",
                    results["classifier"]))
    fs = results.get("few_shot", {})
    for k in sorted({k for per_model in fs.values() for k in per_model}, key=int):
        out.append((f"{k}-shot (SimpleShot CL2N, mean of 5 trials)", "mean",
                    {m: per_model[k] for m, per_model in fs.items() if k in per_model}))
    if results.get("linear_probe"):
        out.append(("Linear probe", "accuracy", results["linear_probe"]))
    return out


def table_rows(rows: dict, tasks: Sequence[str], metric: str, *, std: bool = False) -> list[list[str]]:
    """Header + one row per model: cell = metric in percent (optionally `mean ± std`)."""
    body = [["model", *tasks, "Mean"]]
    for label, cells in rows.items():
        vals = [cells.get(t, {}).get(metric) for t in tasks]
        shown = []
        for t, v in zip(tasks, vals):
            s = _pct(v)
            if std and v is not None and "std" in cells.get(t, {}):
                s += f" ± {100 * cells[t]['std']:.1f}"
            shown.append(s)
        body.append([label, *shown, _pct(_mean(vals))])
    return body


def hierarchy_rows(results: dict, task: str) -> list[list[str]]:
    """Header + one row per model: k-NN accuracy (%) per rank, LCA depth vs chance."""
    body = [["model", *RANKS, "NN LCA depth", "chance"]]
    for label, per_task in results.get("intrinsic", {}).items():
        m = per_task.get(task)
        if not m:
            continue
        ranks = m.get("ranks", {})
        body.append([label, *(_pct(ranks.get(r, {}).get("knn_accuracy")) for r in RANKS),
                     f"{m.get('lca_depth', float('nan')):.2f}", f"{m.get('lca_depth_chance', float('nan')):.2f}"])
    return body


def silhouette_rows(results: dict, task: str) -> list[list[str]]:
    """Header + one row per model: cosine silhouette per rank ('-' where undefined)."""
    body = [["model", *RANKS]]
    for label, per_task in results.get("intrinsic", {}).items():
        ranks = (per_task.get(task) or {}).get("ranks", {})
        if any("silhouette" in cell for cell in ranks.values()):
            cells = [ranks.get(r, {}).get("silhouette") for r in RANKS]
            body.append([label, *("-" if v is None else f"{v:.3f}" for v in cells)])
    return body


def text_table(body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in body]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(body[0]) + " |", "|" + "|".join(["---"] + ["---:"] * (len(body[0]) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body[1:]]
    return "\n".join(lines)


def terminal_report(results: dict) -> str:
    tasks = [t["name"] for t in results["tasks"]]
    parts = []
    for title, metric, rows in settings(results):
        parts += [title, text_table(table_rows(rows, tasks, metric)), ""]
    for task in tasks:
        body = hierarchy_rows(results, task)
        if len(body) > 1:
            parts += [f"Hierarchy of the image space, {task}: k-NN accuracy per rank", text_table(body), ""]
    return "\n".join(parts)


def markdown_report(results: dict) -> str:
    tasks = [t["name"] for t in results["tasks"]]
    out = ["# Evaluation report", "",
           f"Models: {', '.join(m['label'] for m in results['models'])}. "
           f"Templates: `{results['config']['templates']}`. Numbers are percentages.", ""]
    for title, metric, rows in settings(results, extended=True):
        out += [f"## {title}", "", markdown_table(table_rows(rows, tasks, metric, std=metric == "mean")), ""]
    out += ["## Tasks", "", markdown_table([["task", "images", "classes", "rank", "default names", "problems"]] + [
        [t["name"], str(t["n_images"]), str(t["n_classes"]), t["rank"], t["text_type"], str(t["problems"])]
        for t in results["tasks"]]), ""]
    for task in tasks:
        body = hierarchy_rows(results, task)
        if len(body) > 1:
            out += [f"## Hierarchy of the image space: {task}", "",
                    "k-NN accuracy (k=5, cosine, leave-one-out) of each image's taxon at each rank; "
                    "mean depth (1 kingdom .. 7 species) of the lowest common rank of an image and "
                    "its nearest neighbour, against random pairs.", "", markdown_table(body), ""]
            silhouettes = silhouette_rows(results, task)
            if len(silhouettes) > 1:  # not measured with silhouette=False
                out += ["Silhouette (cosine) of the features labelled by their taxon at each rank:", "",
                        markdown_table(silhouettes), ""]
        for png in results.get("figures", {}).get(task, []):
            out += [f"![{task}]({png})", ""]
    fails = results.get("failures", {})
    if fails.get("count"):
        out += ["## Inputs that failed", "", f"{fails['count']} inputs failed; the first ones:", ""]
        out += [f"- {line}" for line in fails.get("examples", [])] + [""]
    return "\n".join(out)


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """results.json + report.md in `out_dir` (atomically); returns their paths."""
    out = Path(out_dir)
    paths = {"json": out / "results.json", "markdown": out / "report.md"}
    write_json_atomic(paths["json"], results)
    write_text_atomic(paths["markdown"], markdown_report(results))
    return paths
