"""Training throughput: `treeclip train` vs open_clip's own training script, in one run.

Both train the same model (a registered config exported as a `local-dir:` model, so both
start from the same weights) on the same synthetic tree-of-life shards with the same
global batch, precision, data-loader workers and CPU threads, for the same number of
steps. Reported: steady-state samples/s (the first logging window, with start-up and the
first batches, is left out), wall time of the whole command, and where the time goes
(waiting for data vs computing).

The baseline is `open_clip_train.main` from open-clip-torch 3.3.0's `training` extra. It
pins webdataset<=0.2.86 while treeclip uses webdataset 1.x, so it runs in its own venv
(`--ocvenv`, default /tmp/ocvenv, made on first use): that venv holds webdataset 0.2.86
and reaches torch, torchvision, open_clip and the other extra dependencies through a .pth
file pointing at treeclip's venv, so both sides run the very same torch build.

open_clip_train reads the caption from a `.txt` member; the baseline's shards are the
same shards with `KEY.txt` = the `taxon_com` caption added, and treeclip trains with the
fixed text type `taxon_com`, so both see the same captions.

    .venv/bin/python benchmarks/train_benchmark.py            # ~5 minutes on 2 cores
    .venv/bin/python benchmarks/train_benchmark.py --model demo-vit-48 --threads 1 --demo-options
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(map(str, cmd)), file=sys.stderr)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def ensure_ocvenv(venv: Path) -> Path:
    """A venv with webdataset 0.2.86 that otherwise sees treeclip's site-packages."""
    python = venv / "bin" / "python"
    if not python.exists():
        sh([sys.executable, "-m", "venv", "--without-pip", venv])
        # no pip of its own: this venv's pip installs into it with --target
        site = Path(sh([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       capture_output=True, text=True).stdout.strip())
        (site / "treeclip_shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        sh([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, "webdataset==0.2.86"])
    check = sh([python, "-c", "import webdataset, open_clip_train.main, open_clip; print(webdataset.__version__)"],
               capture_output=True, text=True)
    print(f"baseline venv {venv}: webdataset {check.stdout.strip()}", file=sys.stderr)
    return python


def ensure_dataset(work: Path, species: int, images: int, size: int) -> Path:
    data = work / "synth"
    if not (data / "manifest.json").exists():
        sh([ROOT / ".venv" / "bin" / "treeclip", "data", "synth", data, "--species", species,
            "--images-per-species", images, "--image-size", size, "--val-fraction", "0"])
    return data


def baseline_shards(data: Path, out: Path) -> list[Path]:
    """The train shards with a `KEY.txt` caption (taxon_com) added for open_clip_train."""
    from treeclip.data.dataset import shard_paths

    out.mkdir(parents=True, exist_ok=True)
    made = []
    for src in shard_paths(data, "train"):
        dst = out / Path(src).name
        made.append(dst)
        if dst.exists():
            continue
        tmp = dst.with_suffix(".tmp")
        with tarfile.open(src) as tin, tarfile.open(tmp, "w") as tout:
            for m in tin:
                payload = tin.extractfile(m).read()
                tout.addfile(m, io.BytesIO(payload))
                if m.name.endswith(".taxon_com.txt"):
                    extra = tarfile.TarInfo(m.name[: -len(".taxon_com.txt")] + ".txt")
                    extra.size, extra.mtime = len(payload), m.mtime
                    tout.addfile(extra, io.BytesIO(payload))
        tmp.rename(dst)
    return made


def run_treeclip(data: Path, init: Path, work: Path, a) -> dict:
    out = work / "treeclip-run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [ROOT / ".venv" / "bin" / "treeclip", "train", data, "--out", out, "--model", a.model, "--pretrained", init,
           "--batch-size", a.batch_size, "--steps", a.steps, "--lr", "1e-4", "--warmup", "10",
           "--text-type", "taxon_com", "--workers", a.workers, "--threads", a.threads, "--save-every", "0",
           "--val-every", "0", "--no-progress", "--precision", a.precision, "--log-every", a.log_every]
    if a.demo_options:
        cmd += ["--compact-vocab", "--cache-images"]
    t = time.perf_counter()
    sh(cmd, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)}, capture_output=True)
    wall = time.perf_counter() - t
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["type"] == "train"]
    steady = [(b["samples"] - a["samples"], b) for a, b in zip(rows, rows[1:])]  # skip the first window
    samples = sum(n for n, _ in steady)
    seconds = sum(n / r["samples_per_s"] for n, r in steady)
    data_s = sum(r["data_s"] for _, r in steady)
    return {"samples_per_s": samples / seconds, "data_share": data_s / seconds, "wall_s": wall}


def run_open_clip(python: Path, shards: list[Path], init: Path, work: Path, a) -> dict:
    logs = work / "open_clip-logs"
    shutil.rmtree(logs, ignore_errors=True)
    first, last = shards[0].stem.split("-")[1], shards[-1].stem.split("-")[1]
    pattern = f"{shards[0].parent}/shard-{{{first}..{last}}}.tar"
    precision = {"fp32": "fp32", "bf16": "amp_bf16"}[a.precision]
    cmd = [python, "-m", "open_clip_train.main", "--train-data", pattern, "--dataset-type", "webdataset",
           "--train-num-samples", a.steps * a.batch_size, "--batch-size", a.batch_size, "--epochs", "1",
           "--workers", a.workers, "--model", f"local-dir:{init}", "--precision", precision, "--device", "cpu",
           "--lr", "1e-4", "--warmup", "10", "--save-frequency", "0", "--zeroshot-frequency", "0",
           "--val-frequency", "0", "--log-every-n-steps", a.log_every, "--logs", logs, "--name", "run", "--report-to", "",
           "--seed", "0"]
    t = time.perf_counter()
    sh(cmd, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)}, capture_output=True, cwd=work)
    wall = time.perf_counter() - t
    log = (logs / "run" / "out.log").read_text()
    # one line per logging window: samples seen so far, mean data and batch time in the window
    pat = r"\[\s*(\d+)/\d+ .*?Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+)"
    windows = [(int(n), float(d), float(b)) for n, d, b in re.findall(pat, log)]
    steady = [((n - n0) // a.batch_size, d, b) for (n0, _, _), (n, d, b) in zip(windows, windows[1:])]
    steps = sum(k for k, _, _ in steady)
    batch_t = sum(k * b for k, _, b in steady) / steps
    data_t = sum(k * d for k, d, _ in steady) / steps
    return {"samples_per_s": a.batch_size / batch_t, "data_share": data_t / batch_t, "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/treeclip-train-bench"))
    p.add_argument("--ocvenv", type=Path, default=Path("/tmp/ocvenv"))
    p.add_argument("--model", default="tiny-vit-64")
    p.add_argument("--species", type=int, default=120)
    p.add_argument("--images", type=int, default=40, help="images per species")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--log-every", type=int, default=3)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--demo-options", action="store_true",
                   help="treeclip trains as `treeclip demo` does: --compact-vocab --cache-images (both exact)")
    p.add_argument("--repeats", type=int, default=3,
                   help="alternate the two trainers this many times; the best run of each counts "
                        "(a shared machine's load varies)")
    a = p.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from treeclip.model import create_model, save_model

    a.work.mkdir(parents=True, exist_ok=True)
    python = ensure_ocvenv(a.ocvenv)
    data = ensure_dataset(a.work, a.species, a.images, a.image_size)
    shards = baseline_shards(data, a.work / "open_clip-shards")
    init = save_model(create_model(a.model, seed=0), a.work / "init")
    runs: dict[str, list[dict]] = {"treeclip": [], "open_clip_train": []}
    for _ in range(a.repeats):
        runs["treeclip"].append(run_treeclip(data, init, a.work, a))
        runs["open_clip_train"].append(run_open_clip(python, shards, init, a.work, a))
        print(json.dumps({k: v[-1] for k, v in runs.items()}), file=sys.stderr)
    ours = max(runs["treeclip"], key=lambda r: r["samples_per_s"])
    theirs = max(runs["open_clip_train"], key=lambda r: r["samples_per_s"])
    result = {"model": a.model, "batch_size": a.batch_size, "steps": a.steps, "workers": a.workers,
              "threads": a.threads, "precision": a.precision, "demo_options": a.demo_options,
              "treeclip": ours, "open_clip_train": theirs, "all_runs": runs,
              "ratio": ours["samples_per_s"] / theirs["samples_per_s"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
