"""BioCLIP's three claims, checked on the demo's numbers, each mixed-text variant against
common names only:

1. zero-shot generalisation: mixed text types beat common names on species never seen
   in training and, by more, on genera never seen;
2. few-shot: the image features of mixed-text models are no worse for 1- and 5-shot
   recognition of unseen species;
3. hierarchy: the image space follows the tree of life (5-NN accuracy per rank, and the
   depth of the lowest common rank of each image and its nearest neighbour) at least as
   well at genus and family.

plus the precondition that makes any of it meaningful: every model learned (zero-shot
on the species it was trained on). The bars are this project's (the paper states the
claims without thresholds); a claim holds when the mean over seeds clears its bar and,
for the zero-shot gains, the mixed model is ahead in every seed.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

BARS = {
    "learned": 0.60,        # zero-shot top-1 on seen species, every model and seed
    "unseen_species": 0.15,  # mixed - common, zero-shot on unseen species (mean; ahead in every seed)
    "unseen_genera": 0.25,   # the same on unseen genera
    "few_shot": -0.02,       # mixed - common, 1- and 5-shot on unseen species: no worse by more than 2 pts
    "hierarchy": 0.0,        # mixed - common at genus and family (5-NN) and in LCA depth: no worse
}


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(vals) if vals else float("nan")


def _row(claim: str, measure: str, variant: str, com: Sequence[float], mixed: Sequence[float], bar: float,
         every_seed: bool, unit: str = "pts") -> dict:
    diffs = [m - c for m, c in zip(mixed, com)]
    diff = _mean(diffs)
    ahead = sum(d > 0 for d in diffs)
    holds = not math.isnan(diff) and diff >= bar and (ahead == len(diffs) or not every_seed)
    return {"claim": claim, "measure": measure, "variant": variant, "com": list(com), "mixed": list(mixed),
            "diff": diff, "ahead_in": ahead, "seeds": len(diffs), "bar": bar, "every_seed": every_seed,
            "unit": unit, "holds": bool(holds)}


def check_claims(summary: dict, variants: Sequence[str]) -> list[dict]:
    """One row per (claim, measure, mixed variant): the numbers per seed, the mean
    difference, the bar and whether it holds. `summary` is `report.summarise`'s."""
    table, hier, lca = summary["table"], summary["hierarchy"], summary["lca_depth"]
    rows = [_learned(table, v) for v in variants]
    for v in (v for v in variants if v != "com" and "com" in variants):
        rows += [
            _row("zero-shot generalisation", "zero-shot, unseen species", v, table["com"]["0"]["synth-unseen"],
                 table[v]["0"]["synth-unseen"], BARS["unseen_species"], True),
            _row("zero-shot generalisation", "zero-shot, unseen genera", v, table["com"]["0"]["synth-unseen-genus"],
                 table[v]["0"]["synth-unseen-genus"], BARS["unseen_genera"], True),
        ]
        rows += [_row("few-shot", f"{k}-shot, unseen species", v, table["com"][k]["synth-unseen"],
                      table[v][k]["synth-unseen"], BARS["few_shot"], False) for k in ("1", "5")]
        rows += [_row("hierarchy", f"5-NN accuracy at {rank}, unseen species", v,
                      hier["com"]["synth-unseen"].get(rank, []), hier[v]["synth-unseen"].get(rank, []),
                      BARS["hierarchy"], False) for rank in ("genus", "family")]
        rows.append(_row("hierarchy", "nearest neighbour's lowest common rank (depth 1-7), unseen species", v,
                         lca["com"]["synth-unseen"], lca[v]["synth-unseen"], BARS["hierarchy"], False, unit="ranks"))
    return rows


def _learned(table: dict, variant: str) -> dict:
    seen = table[variant]["0"]["synth-seen"]
    low = min((s for s in seen if not math.isnan(s)), default=float("nan"))
    return {"claim": "the models learn", "measure": "zero-shot, seen species (lowest seed)", "variant": variant,
            "com": [], "mixed": list(seen), "diff": low, "ahead_in": sum(s >= BARS["learned"] for s in seen),
            "seeds": len(seen), "bar": BARS["learned"], "every_seed": True, "unit": "%",
            "holds": bool(not math.isnan(low) and low >= BARS["learned"])}


def claim_lines(rows: list[dict], titles: dict[str, str]) -> list[str]:
    """The report's table of claims: numbers (mean over seeds, each seed), bar, verdict."""
    md = ["| claim | measure | text type | common names | this text type | difference | bar | holds |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        scale = 1 if r["unit"] == "ranks" else 100
        fmt = (lambda v: f"{v:.2f}") if r["unit"] == "ranks" else (lambda v: f"{100 * v:.1f}")
        cells = [f"{fmt(_mean(x))} ({', '.join(fmt(v) for v in x)})" if x else "-" for x in (r["com"], r["mixed"])]
        if r["claim"] == "the models learn":
            diff, bar = f"lowest {fmt(r['diff'])}", f">= {100 * r['bar']:.0f}% in every seed"
        else:
            diff = (f"{scale * r['diff']:+.2f}" if r["unit"] == "ranks" else f"{100 * r['diff']:+.1f} pts") + \
                f" (ahead in {r['ahead_in']}/{r['seeds']})"
            bar = (f">= {scale * r['bar']:+.0f} {r['unit']}" if r["unit"] == "pts" else f">= {r['bar']:+.2f}") + \
                (", ahead in every seed" if r["every_seed"] else "")
            bar = bar.replace(">= +0 pts", "no worse").replace(">= +0.00", "no worse").replace(">= -2 pts",
                                                                                                "no worse by > 2 pts")
        md.append(f"| {r['claim']} | {r['measure']} | {titles.get(r['variant'], r['variant'])} | {cells[0]} | "
                  f"{cells[1]} | {diff} | {bar} | {'**yes**' if r['holds'] else 'no'} |")
    return md
