"""Fine-tuning modes: speed and memory of full fine-tuning vs locked towers vs LoRA (peft).

Each mode is one `treeclip train` process on the synthetic tree of life, started from the
same "published" weights (the model saved into a hub folder in the Hugging Face layout and
loaded with `--pretrained hf-hub:bench/NAME --hub-dir`, as a real fine-tune starts), same
batch, steps, threads and data. Reported per mode: trainable parameters, steady-state
samples/s (median of the metrics.jsonl windows after the first, which holds start-up),
whole-command wall time and peak RSS (`/usr/bin/time -v`, else the child's getrusage).
With `--start-model DIR --zero-shot-task TASK` the fine-tunes start from a trained model (a
demo model) and each fine-tuned model, and the start, are scored zero-shot on TASK (e.g.
the demo tree's `synth-unseen`: species no fine-tune saw), with the same templates.

    .venv/bin/python benchmarks/finetune_modes.py                      # demo-vit-32, ~3 minutes on 2 cores
    .venv/bin/python benchmarks/finetune_modes.py --model tiny-vit-64 --steps 30
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "full": [],
    "lock-image": ["--lock-image"],
    "lock-image, last 2 groups": ["--lock-image", "--lock-image-unlocked-groups", "2"],
    "lock-image + lock-text (projections)": ["--lock-image", "--lock-image-unlocked-groups", "1", "--lock-text",
                                             "--lock-text-unlocked-layers", "1"],
    "lora rank 8 (q/k/v + MLP, both towers)": ["--lora-rank", "8"],
    "lora rank 8 + lock-image": ["--lora-rank", "8", "--lock-image"],
}


def treeclip(*args: object) -> list[str]:
    return [sys.executable, "-m", "treeclip", *map(str, args)]


def ensure_data(work: Path, species: int, images: int, size: int) -> Path:
    data = work / "synth"
    if not (data / "manifest.json").exists():
        subprocess.run(treeclip("data", "synth", data, "--species", species, "--images-per-species", images,
                                "--image-size", size), check=True)
    return data


def publish(model: str, hub: Path, start: Path | None = None) -> str:
    """`model` (seed 0, or the model dir `start`) as a hub repo `bench/<model>` in the
    Hugging Face cache layout."""
    from treeclip.model import create_model, load_model, save_model

    repo = hub / f"models--bench--{model}"
    snap = repo / "snapshots" / ("0" * 40)
    if not (snap / "open_clip_model.safetensors").exists():
        save_model(load_model(str(start)) if start else create_model(model, seed=0), snap)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text("0" * 40)
    return f"hf-hub:bench/{model}"


def run_mode(name: str, flags: list[str], args: argparse.Namespace, data: Path, spec: str, hub: Path,
             work: Path) -> dict:
    """One training process; its numbers."""
    out = work / "runs" / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    shutil.rmtree(out, ignore_errors=True)
    cmd = treeclip("train", data, "--out", out, "--model", args.model, "--pretrained", spec, "--hub-dir", hub,
                   "--steps", args.steps, "--batch-size", args.batch_size, "--threads", args.threads,
                   "--workers", 1, "--text-type", "mixed", "--log-every", args.log_every, "--save-every", 0,
                   "--val-every", 0, "--no-label-set", "--no-progress", *flags)
    timed = Path("/usr/bin/time").exists()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run((["/usr/bin/time", "-v"] if timed else []) + cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{name}: failed\n{proc.stderr[-3000:]}")
    rss_kb = (int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) if timed
              else max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    # the last such line: with --lora-rank the locks' line comes first, then LoRA's
    trained = ([None] + list(re.finditer(r"training ([\d,]+) of ([\d,]+) parameters", proc.stderr)))[-1]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r["samples_per_s"] for r in rows if r["type"] == "train"][1:]
    summary = json.loads((out / "summary.json").read_text())
    zero_shot = score(out / "model", args) if args.zero_shot_task else None
    return {"mode": name, "trainable": trained.group(1) if trained else "all", "zero_shot_top1": zero_shot,
            "samples_per_s": statistics.median(windows), "windows": [round(w, 1) for w in windows],
            "wall_s": round(wall, 1), "peak_rss_mib": round(rss_kb / 1024), "final_loss": summary["final_loss"]}


def score(model: Path, args: argparse.Namespace) -> float:
    """Zero-shot species top-1 of `model` on `--zero-shot-task` (single template)."""
    out = args.work / "eval" / model.parent.name
    subprocess.run(treeclip("eval", "run", model, "--task", args.zero_shot_task, "--shots", "0", "--no-intrinsic",
                            "--templates", "single", "--out", out, "--cache", args.work / "cache", "-q"),
                   check=True, capture_output=True)
    results = json.loads((out / "results.json").read_text())
    (per_text,) = results["zero_shot"].values()
    (per_task,) = per_text.values()
    (metrics,) = per_task.values()
    return metrics["top1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/treeclip-finetune-bench"))
    ap.add_argument("--model", default="demo-vit-32")
    ap.add_argument("--species", type=int, default=60)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--modes", help="Only the modes whose name contains one of these comma-separated words.")
    ap.add_argument("--repeats", type=int, default=1, help="Run the modes this many times, interleaved.")
    ap.add_argument("--start-model", type=Path, help="Start every fine-tune from this trained model dir.")
    ap.add_argument("--data", type=Path, help="Fine-tune on this dataset dir (default: a synthetic tree made here).")
    ap.add_argument("--zero-shot-task", help="Score each fine-tuned model (and the start) zero-shot on this task.")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data or ensure_data(args.work, args.species, args.images, args.image_size)
    hub = args.work / "hub"
    spec = publish(args.model, hub, args.start_model)
    if args.start_model and args.zero_shot_task:
        print(json.dumps({"mode": "start (no fine-tune)", "zero_shot_top1": score(args.start_model, args)}))
    from treeclip.runtime.precision import cpu_features

    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"# {args.model}, {args.steps} steps of batch {args.batch_size}, {args.threads} threads; "
          f"CPU flags: {cpu_features().describe()}; load average before: {' '.join(load)}")
    modes = {n: f for n, f in MODES.items()
             if not args.modes or any(w.strip() in n for w in args.modes.split(","))}
    results = []
    for _ in range(args.repeats):
        for name, flags in modes.items():
            results.append(run_mode(name, flags, args, data, spec, hub, args.work))
            print(json.dumps(results[-1]), flush=True)
    # the CPU may be shared: per mode, the best run's median window and the best window seen
    print("\n| mode | trainable parameters | samples/s (best run's median window) | best window | wall s (best) "
          "| peak RSS MiB | zero-shot top-1 |")
    print("|---|---|---|---|---|---|---|")
    for name in modes:
        runs = [r for r in results if r["mode"] == name]
        best = max(runs, key=lambda r: r["samples_per_s"])
        print(f"| {name} | {best['trainable']} | {best['samples_per_s']:.0f} | {max(max(r['windows']) for r in runs):.0f} "
              f"| {min(r['wall_s'] for r in runs)} | {max(r['peak_rss_mib'] for r in runs)} "
              f"| {runs[-1]['zero_shot_top1'] if runs[-1]['zero_shot_top1'] is not None else '-'} |")


if __name__ == "__main__":
    main()
