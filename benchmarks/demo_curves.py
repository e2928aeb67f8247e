"""Learning curves of a demo run: seen-species validation top-1 against samples seen,
per model (mean over seeds), read from each training run's metrics.jsonl.

    python benchmarks/demo_curves.py runs/demo            # a markdown table
    python benchmarks/demo_curves.py runs/demo --json     # the numbers

The validation split holds new images of the seen species; CLIP models are scored
zero-shot against `a photo of {name}.` of their own query text type, classifiers by
their species head (`treeclip.train.validate`). `treeclip demo --long` validates ten
times per run, the default profile four times.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def curves(run_dir: Path) -> dict[str, dict[int, list[float]]]:
    """{model (label without seed): {samples seen: [top-1 per seed]}}."""
    out: dict[str, dict[int, list[float]]] = {}
    for metrics in sorted((run_dir / "train").glob("*/metrics.jsonl")):
        variant = metrics.parent.name.rsplit("-s", 1)[0]
        records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()]
        batch = next(r["samples"] // r["step"] for r in records if r.get("type") == "train")
        for record in (r for r in records if r.get("type") == "val"):
            score = record.get("zeroshot_top1", record.get("top1"))
            out.setdefault(variant, {}).setdefault(record["step"] * batch, []).append(score)
    return out


def markdown(table: dict[str, dict[int, list[float]]]) -> str:
    samples = sorted({n for per in table.values() for n in per})
    lines = ["| model | " + " | ".join(f"{n / 1000:.0f}k" for n in samples) + " |",
             "|---|" + "---|" * len(samples)]
    for variant, per in table.items():
        cells = [f"{100 * statistics.fmean(per[n]):.1f}" if n in per else "-" for n in samples]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a `treeclip demo --out` folder")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args()
    table = curves(args.run_dir)
    print(json.dumps(table, indent=1) if args.json else markdown(table))


if __name__ == "__main__":
    main()
