"""Does the taxon-aware loss help? Same data, model, seed and steps; only `--loss` differs.

Trains one model per (text type, loss) on the synthetic tree of life, then zero-shot
evaluates each with `treeclip eval` on the synth tasks: seen species, unseen species of
seen genera, and species of unseen genera. Prints a table and writes JSON.

    .venv/bin/python benchmarks/taxon_aware_loss.py --text-types mixed,mixed-sample
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREECLIP = ROOT / ".venv" / "bin" / "treeclip"
TASKS = ("synth-seen", "synth-unseen", "synth-unseen-genus")


def sh(cmd: list) -> None:
    print("$", " ".join(map(str, cmd)), file=sys.stderr)
    subprocess.run([str(c) for c in cmd], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/treeclip-taxon-aware"))
    p.add_argument("--species", type=int, default=150)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--model", default="micro-vit-32")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--text-types", default="mixed")
    a = p.parse_args()

    data = a.work / "synth"
    if not (data / "manifest.json").exists():
        sh([TREECLIP, "data", "synth", data, "--species", a.species, "--images-per-species", a.images])
    results = {}
    for text_type in a.text_types.split(","):
        runs = []
        for loss in ("clip", "taxon-aware"):
            run = a.work / f"{text_type}-{loss}-s{a.seed}"
            if not (run / "model" / "open_clip_model.safetensors").exists():
                sh([TREECLIP, "train", data, "--out", run, "--model", a.model, "--steps", a.steps,
                    "--batch-size", a.batch_size, "--lr", a.lr, "--warmup", a.warmup, "--seed", a.seed,
                    "--text-type", text_type, "--loss", loss, "--threads", a.threads, "--workers", "1",
                    "--save-every", "0", "--val-every", "0", "--no-progress"])
            runs.append(run / "model")
        out = a.work / f"eval-{text_type}-s{a.seed}"
        cmd = [TREECLIP, "eval", "run", *runs, "--shots", "0", "--no-intrinsic", "--templates", "single",
               "--out", out, "-q"]
        for task in TASKS:
            cmd += ["--task", data / "tasks" / task]
        sh(cmd)
        results[text_type] = json.loads((out / "results.json").read_text())
    (a.work / "taxon_aware.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2)[:4000])


if __name__ == "__main__":
    main()
