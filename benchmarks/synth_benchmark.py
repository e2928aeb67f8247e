"""Speed of the synthetic tree of life generator, against a named baseline in the same run.

1. Rendering + JPEG encoding, one process:
   - baseline "unbatched": the same renderer called one image at a time
     (`render_batch(look, 1, ...)`), as a per-image drawing loop would be;
   - treeclip: `render_batch` over all images of a species at once (numpy, vectorised).
   Same species, same image count, same size; the ratio is images/s treeclip / baseline.
2. End to end: `synthesize()` (render, encode, pixel hashes, tar shards, parquet tables,
   task folders) with 1 and with 2 worker processes: images/s and the speed-up.

Usage: .venv/bin/python benchmarks/synth_benchmark.py [--size 64] [--species 60] [--images 40]
Prints a markdown table (for docs/benchmarks.md) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

from treeclip.data.synth import SynthConfig, _encode, load_species, look_of, render_batch, synthesize


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _render_rate(species, n: int, size: int, batched: bool, min_seconds: float = 3.0) -> tuple[float, float]:
    """(images per wall second, images per CPU second) rendering + encoding `n` images of
    each species, looping over the species until at least `min_seconds` have passed."""
    done, start, cpu = 0, time.perf_counter(), _cpu_seconds()
    while True:
        for i, sp in enumerate(species):
            look = look_of(sp.taxon, sp.meaning)
            rng = np.random.default_rng(i)
            if batched:
                batch = render_batch(look, n, size, rng)
            else:
                batch = [render_batch(look, 1, size, rng)[0] for _ in range(n)]
            for px in batch:
                _encode(px, 95)
            done += n
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed, done / (_cpu_seconds() - cpu)


def _synth_rate(config: SynthConfig) -> tuple[float, float, int]:
    """(images per wall second, images per CPU second, images) of one `synthesize` run."""
    out = tempfile.mkdtemp(prefix="synth-bench-")
    cpu = _cpu_seconds()
    try:
        summary = synthesize(out, config)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n = sum(summary["dataset"].values()) + sum(t["images"] for t in summary["tasks"].values())
    return n / summary["seconds"], n / (_cpu_seconds() - cpu), n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--species", type=int, default=60, help="species for the end-to-end runs")
    ap.add_argument("--images", type=int, default=40, help="training images per species (and per render batch)")
    args = ap.parse_args(argv)

    pool = load_species()[::12]  # a spread of body plans, appendage counts and markings
    base, base_cpu = _render_rate(pool, args.images, args.size, batched=False)
    fast, fast_cpu = _render_rate(pool, args.images, args.size, batched=True)
    cfg = SynthConfig(species=args.species, images_per_species=args.images,
                      eval_images_per_species=args.images // 2, image_size=args.size)
    one, one_cpu, n_images = _synth_rate(SynthConfig(**{**cfg.__dict__, "workers": 1}))
    two, two_cpu, _ = _synth_rate(SynthConfig(**{**cfg.__dict__, "workers": 2}))
    load = os.getloadavg()[0]
    result = {
        "image_size": args.size, "cpu_count": os.cpu_count(), "load_average_1min": round(load, 1),
        "render_unbatched_img_s": round(base), "render_batched_img_s": round(fast),
        "render_unbatched_img_per_cpu_s": round(base_cpu), "render_batched_img_per_cpu_s": round(fast_cpu),
        "render_ratio": round(fast / base, 2), "render_ratio_cpu": round(fast_cpu / base_cpu, 2),
        "synth_images": n_images, "synth_1_worker_img_s": round(one), "synth_2_workers_img_s": round(two),
        "synth_1_worker_img_per_cpu_s": round(one_cpu), "synth_2_workers_img_per_cpu_s": round(two_cpu),
    }
    print(f"{args.size} px images; load average {load:.1f} on {os.cpu_count()} cores (other work shares them)\n")
    print("| measurement | images/s (wall) | images per CPU-second |")
    print("|---|---|---|")
    print(f"| baseline: same renderer one image at a time, + JPEG encode (1 process) | {base:.0f} | {base_cpu:.0f} |")
    print(f"| treeclip: vectorised over a species' images, + JPEG encode (1 process) | {fast:.0f} "
          f"(x{fast / base:.2f}) | {fast_cpu:.0f} (x{fast_cpu / base_cpu:.2f}) |")
    print(f"| `synthesize` end to end, 1 worker ({n_images} images: render, encode, hashes, shards, tasks) "
          f"| {one:.0f} | {one_cpu:.0f} |")
    print(f"| `synthesize` end to end, 2 workers | {two:.0f} | {two_cpu:.0f} |")
    print(json.dumps(result), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
