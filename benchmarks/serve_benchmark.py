"""Load check of `treeclip serve`: a bounded burst of concurrent requests on loopback.

Starts the real server (`treeclip serve` in a subprocess, like a user) twice on the same
model and label set, and sends the same burst to each:

- treeclip: micro-batching on (`--max-batch 32 --max-wait-ms 5`): requests that arrive
  together share one image-encoder call;
- baseline: micro-batching off (`--max-batch 1`): one encoder call per image.

Every request posts one distinct JPEG (no embedding-cache hits) to `POST /predict`
(species rank, top 5, roll-up at 0.5). Reports requests/s, p50/p95 latency and failures;
any failed request fails the benchmark.

Usage: .venv/bin/python benchmarks/serve_benchmark.py [--model tiny-vit-64] [--clients 16] [--requests 12]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TAXA = ROOT / "src" / "treeclip" / "data" / "synth_taxa.csv"


def make_model(name: str, out: Path) -> Path:
    from treeclip.model import create_model, save_model

    save_model(create_model(name, seed=0), out)
    return out


def photo(i: int, size: int = 320) -> bytes:
    rng = np.random.default_rng(i)
    arr = (rng.random((size * 3 // 4, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def body_for(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in (("rank", "species"), ("k", "5"), ("threshold", "0.5"))]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def start(model: Path, cache: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "TREECLIP_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "treeclip", "serve", str(model), "--taxa", str(TAXA),
                             "--port", "0", "--log-level", "warning", *extra],
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:
        if "serving" in line:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, line.split(" at ", 1)[1].split()[0].replace("localhost", "127.0.0.1")
    raise SystemExit(f"treeclip serve did not start (exit {proc.wait()})")


def burst(url: str, bodies: list[tuple[bytes, str]], clients: int) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    per_client = [bodies[c::clients] for c in range(clients)]

    def client(mine: list[tuple[bytes, str]]) -> None:
        barrier.wait()
        for data, ctype in mine:
            req = urllib.request.Request(url + "predict", data=data, method="POST",
                                         headers={"Content-Type": ctype})
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    answer = json.loads(resp.read())
                ok = resp.status == 200 and answer["failed"] == 0 and answer["images"][0]["predictions"]
                error = None if ok else f"bad answer {answer}"
            except (urllib.error.URLError, OSError, ValueError) as e:
                error = str(e)
            dt = time.perf_counter() - t0
            with lock:
                (failures.append(error) if error else latencies.append(dt))

    threads = [threading.Thread(target=client, args=(m,)) for m in per_client]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    with urllib.request.urlopen(url + "health") as resp:
        health = json.loads(resp.read())
    lat = np.asarray(latencies) * 1000
    return {"requests": len(bodies), "failed": len(failures), "wall_s": wall, "rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
            "encoder_calls": health["batching"]["batches"], "largest_batch": health["batching"]["largest_batch"],
            "first_failure": failures[0] if failures else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-vit-64", help="registered config, random weights (speed only)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=12, help="requests per client")
    ap.add_argument("--warmup", type=int, default=8, help="requests sent before timing, per server")
    args = ap.parse_args()

    n = args.clients * args.requests
    with tempfile.TemporaryDirectory(prefix="treeclip-serve-bench-") as tmp:
        tmp = Path(tmp)
        model = make_model(args.model, tmp / "model")
        results = {}
        # every client in flight at once is admitted: the burst measures batching, not refusals
        admit = ["--max-concurrent", str(max(32, args.clients))]
        for label, extra in (("batched", ["--max-batch", "32", "--max-wait-ms", "5"]),
                             ("unbatched (baseline)", ["--max-batch", "1", "--max-wait-ms", "0"])):
            proc, url = start(model, tmp / "cache", extra + admit)
            try:
                warm = [body_for(photo(10_000 + i), f"warm{i}.jpg") for i in range(args.warmup)]
                burst(url, warm, min(args.clients, len(warm)) or 1)
                bodies = [body_for(photo(i), f"p{i}.jpg") for i in range(n)]
                results[label] = r = burst(url, bodies, args.clients)
            finally:
                proc.terminate()
                proc.wait(30)
            print(f"{label:>22}: {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
                  f"failed {r['failed']}/{r['requests']}  largest batch {r['largest_batch']}", flush=True)
    batched, base = results["batched"], results["unbatched (baseline)"]
    print(f"\nmodel {args.model}, {len(TAXA.read_text().splitlines()) - 1} taxa, {args.clients} concurrent clients x "
          f"{args.requests} requests, 1 image (320x240 JPEG) each, {os.cpu_count()} CPUs")
    print(f"throughput ratio batched / unbatched: {batched['rps'] / base['rps']:.2f}x; "
          f"p95 ratio: {batched['p95_ms'] / base['p95_ms']:.2f}x")
    if batched["failed"] or base["failed"]:
        raise SystemExit(f"failed requests: {batched['first_failure'] or base['first_failure']}")


if __name__ == "__main__":
    main()
