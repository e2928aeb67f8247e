"""BioCLIP's claims as the paper makes them (BIOCLIP-FACTS 4b), checked on the demo's
numbers. Each row names the paper's claim, the paper's number where there is one, the two
sides measured here (one value per seed) and whether it holds:

- *the models learn* (the precondition): every CLIP model's zero-shot top-1 on seen
  species, and every classifier's head top-1 on seen species, >= 60% in every seed;
- *text types* (the paper's text-type ablation): mixed text, drawn per batch (BioCLIP)
  and per sample, against common names only, zero-shot on unseen species and genera;
- *objective* (the paper's objective ablation): CLIP training against a cross-entropy
  species classifier and a hierarchical cross-entropy classifier with the same image
  tower, data and steps, 1- and 5-shot on unseen species and unseen genera.

A comparison holds when the paper's side is ahead in every seed and the mean difference
exceeds twice the pooled standard deviation over seeds (so it needs >= 2 seeds). Few-shot
and the hierarchy measure per text type are reported as measurements, not claims: the
paper does not claim that the text type changes them.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from treeclip.demo.profiles import CLASSIFIERS

LEARNED_BAR = 0.60
"""Seen-species top-1 every model must reach in every seed."""

TEXT_TYPE_CLAIM = ("mixed text types keep the generalisation of taxonomic names to unseen taxa "
                   "while allowing any name as a query (text-type ablation, Rare Species zero-shot)")
OBJECTIVE_CLAIM = "CLIP's objective beats cross-entropy classification for few-shot (objective ablation)"
PAPER_FEW_SHOT = {"ce": {"1": "45 vs 17", "5": "64 vs 26"}, "hier-ce": {"1": "45 vs 19", "5": "64 vs 31"}}
"""The paper's 1-/5-shot, CLIP vs each classifier (as reported by readers of the paper, r)."""


def _clean(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def separation(paper_side: Sequence[float], other: Sequence[float]) -> dict:
    """The comparison of two sides measured per seed (same seed order): the mean
    difference, the pooled standard deviation over seeds, how many seeds the paper's
    side leads in, and whether it holds (ahead in every seed and the difference above
    twice the pooled spread)."""
    a, b = list(paper_side), list(other)
    pairs = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    diffs = [x - y for x, y in pairs]
    diff = statistics.fmean(diffs) if diffs else float("nan")
    if len(pairs) >= 2:
        pooled = math.sqrt((statistics.variance([x for x, _ in pairs]) + statistics.variance([y for _, y in pairs])) / 2)
    else:
        pooled = float("nan")
    ahead = sum(d > 0 for d in diffs)
    holds = len(pairs) >= 2 and len(pairs) == len(a) == len(b) and ahead == len(pairs) and diff > 2 * pooled
    return {"diff": diff, "pooled_std": pooled, "ahead_in": ahead, "seeds": len(pairs), "holds": bool(holds)}


def _row(claim: str, paper: str, measure: str, side: str, baseline: str, ours: Sequence[float],
         theirs: Sequence[float], paper_number: str = "") -> dict:
    return {"claim": claim, "paper": paper, "paper_number": paper_number, "measure": measure, "side": side,
            "baseline": baseline, "side_values": list(ours), "baseline_values": list(theirs),
            **separation(ours, theirs)}


def learned_row(variant: str, seen: Sequence[float]) -> dict:
    """The precondition for one variant: seen-species top-1 >= LEARNED_BAR in every seed."""
    vals = _clean(seen)
    low = min(vals) if vals else float("nan")
    measure = "head top-1, seen species" if variant in CLASSIFIERS else "zero-shot top-1, seen species"
    return {"claim": "the models learn", "paper": "", "paper_number": "", "measure": measure, "side": variant,
            "baseline": "", "side_values": list(seen), "baseline_values": [], "diff": low,
            "pooled_std": float("nan"), "ahead_in": sum(v >= LEARNED_BAR for v in vals), "seeds": len(seen),
            "holds": bool(vals and len(vals) == len(seen) and low >= LEARNED_BAR)}


def clip_side(variants: Sequence[str]) -> str | None:
    """The CLIP model the objective claim is checked with: BioCLIP's recipe (mixed per
    batch) where the run has it, else another mixed-text model."""
    for v in ("mixed", "mixed-sample"):
        if v in variants:
            return v
    return None


def check_claims(table: dict, variants: Sequence[str]) -> list[dict]:
    """Every claim row the run's variants allow. `table[variant][setting][task]` holds one
    value per seed; setting "0" is zero-shot (a classifier's head top-1), "1"/"5" k-shot."""
    rows = [learned_row(v, table[v]["0"]["synth-seen"]) for v in variants]
    if "com" in variants:
        for v in (v for v in ("mixed", "mixed-sample") if v in variants):
            for task, title in (("synth-unseen", "unseen species"), ("synth-unseen-genus", "unseen genera")):
                rows.append(_row("text types", TEXT_TYPE_CLAIM, f"zero-shot top-1, {title}", v, "com",
                                 table[v]["0"][task], table["com"]["0"][task]))
    clip = clip_side(variants)
    for c in (c for c in CLASSIFIERS if c in variants and clip is not None):
        for k in ("1", "5"):
            for task, title in (("synth-unseen", "unseen species"), ("synth-unseen-genus", "unseen genera")):
                rows.append(_row("objective", OBJECTIVE_CLAIM, f"{k}-shot, {title}", clip, c, table[clip][k][task],
                                 table[c][k][task], paper_number=PAPER_FEW_SHOT[c][k]))
    return rows


def _pct(values: Sequence[float]) -> str:
    vals = _clean(values)
    if not vals:
        return "-"
    return f"{100 * statistics.fmean(vals):.1f} ({', '.join(f'{100 * v:.1f}' for v in values)})"


def claim_lines(rows: list[dict], titles: dict[str, str]) -> list[str]:
    """The report's table of claims: the paper's claim and number, both sides (mean over
    seeds, each seed), the difference with the pooled spread, and the verdict."""
    md = ["| claim | measure | paper's side | against | paper's number | ours: paper's side | ours: against "
          "| difference (pooled sd) | ahead in | holds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        side = titles.get(r["side"], r["side"])
        if r["claim"] == "the models learn":
            md.append(f"| the models learn | {r['measure']} | {side} | - | - | {_pct(r['side_values'])} | "
                      f">= {100 * LEARNED_BAR:.0f}% in every seed | lowest {100 * r['diff']:.1f} | "
                      f"{r['ahead_in']}/{r['seeds']} | {'**yes**' if r['holds'] else 'no'} |")
            continue
        sd = "-" if math.isnan(r["pooled_std"]) else f"{100 * r['pooled_std']:.1f}"
        md.append(f"| {r['claim']} | {r['measure']} | {side} | {titles.get(r['baseline'], r['baseline'])} | "
                  f"{r['paper_number'] or '-'} | {_pct(r['side_values'])} | {_pct(r['baseline_values'])} | "
                  f"{100 * r['diff']:+.1f} pts ({sd}) | {r['ahead_in']}/{r['seeds']} | "
                  f"{'**yes**' if r['holds'] else 'no'} |")
    return md
