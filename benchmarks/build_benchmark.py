"""Dataset build throughput: `treeclip data build` vs a plain one-process loop.

Both turn the same folder of large JPEGs (default 200 photos of 2000 x 1500) into 224 px
JPEGs. The baseline is what a script would do: PIL open -> RGB -> bicubic resize (shorter
side to 224, centre crop) -> JPEG encode, one image after another. The builder does all of
that plus hashing, deduplication and shard writing, with the JPEG draft decode and
`--workers` processes. Prints images/s of each and the ratio.

    .venv/bin/python benchmarks/build_benchmark.py [--n 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make_photos(folder: Path, n: int, width: int, height: int) -> None:
    """n photo-like JPEGs (smooth shapes, texture and sensor noise) in 4 class folders."""
    rng = np.random.default_rng(0)
    small = (width // 8, height // 8)
    for i in range(n):
        img = Image.new("RGB", small, tuple(int(x) for x in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(25):
            x, y = int(rng.integers(0, small[0])), int(rng.integers(0, small[1]))
            d.ellipse([x, y, x + int(rng.integers(10, small[0] // 2)), y + int(rng.integers(10, small[1] // 2))],
                      fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img = img.filter(ImageFilter.GaussianBlur(1)).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.integers(-8, 9, (height, width, 1), dtype=np.int16)
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        cls = ["Pica hudsonia", "Pica pica", "Morus alba", "Amanita muscaria"][i % 4]
        (folder / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / cls / f"photo{i:04d}.jpg", quality=90)


def plain_loop(folder: Path, out: Path, size: int) -> int:
    """The baseline: open, resize, encode, one process, no tricks."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in sorted(folder.rglob("*.jpg")):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        (out / f"{n:06d}.jpg").write_bytes(buf.getvalue())
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--width", type=int, default=2000)
    ap.add_argument("--height", type=int, default=1500)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs; the best time of each counts")
    args = ap.parse_args()

    from treeclip.data.build import BuildOptions, build_dataset

    tmp = Path(tempfile.mkdtemp(prefix="treeclip-build-bench-"))
    try:
        photos = tmp / "photos"
        t = time.perf_counter()
        make_photos(photos, args.n, args.width, args.height)
        print(f"made {args.n} JPEGs of {args.width}x{args.height} in {time.perf_counter() - t:.1f}s", file=sys.stderr)

        # Interleaved repeats, best of each: other load on the machine hits both alike.
        # CPU seconds (one process) are also reported: unlike wall time they do not depend
        # on what else runs on the machine.
        plain_s = plain_cpu = build_cpu = float("inf")
        results: dict[int, float] = {}
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            n = plain_loop(photos, tmp / "plain", args.size)
            plain_s = min(plain_s, time.perf_counter() - t)
            plain_cpu = min(plain_cpu, time.process_time() - c)
            for workers in sorted({1, args.workers}):
                opts = BuildOptions(size=args.size, resolve=False, workers=workers, val_fraction=0.05)
                t, c = time.perf_counter(), time.process_time()
                r = build_dataset([("folder", str(photos))], tmp / f"built{workers}", opts, progress=False)
                results[workers] = min(results.get(workers, float("inf")), time.perf_counter() - t)
                if workers == 1:
                    build_cpu = min(build_cpu, time.process_time() - c)
                assert r.counts["samples"] == n, r.counts

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"cpus: {os.cpu_count()}  load average: {load:.1f}  images: {n}  size: {args.size}")
        print(f"plain loop (PIL open -> resize -> JPEG, 1 process): {n / plain_s:7.1f} img/s")
        for workers, secs in results.items():
            print(f"treeclip data build, {workers} worker(s):            {n / secs:7.1f} img/s  "
                  f"ratio {plain_s / secs:.2f}x")
        print(f"per CPU second, 1 process: plain {n / plain_cpu:.1f} img/s, builder {n / build_cpu:.1f} img/s, "
              f"ratio {plain_cpu / build_cpu:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
