"""A published-size tree-of-life label set: predict start-up, peak memory, 1,000 images.

A synthetic label set as large as TreeOfLife-200M's (867,000 taxa x 768, float32, 2.7 GB)
is written once, in the published layout inside a Hugging Face cache folder
(`datasets--imageomics--TreeOfLife-200M/refs/main`, `snapshots/<rev>/embeddings/
txt_emb_species.{npy,json}`; a realistic tree: ~145k genera, ~10k families, ~30% of taxa
with a common name). Every measurement is one `treeclip predict` child process, read with
`os.wait4` (wall time and that child's own `ru_maxrss`):

- start-up to first result: one photo to family rank, `--taxa hf-hub:imageomics/TreeOfLife-200M`;
  cold = the first run with an empty treeclip cache (it parses the 867k-entry JSON and
  caches its columns), then warm (the OS page cache is warm in both: the files were just
  written; a machine that never read them adds the disk time);
- peak RSS above the model's own: that child's ru_maxrss minus the ru_maxrss of the same
  command with the model alone (the same path with a label set of 2 taxa in the same
  layout); likewise the start-up time above the model's own (importing torch and
  open_clip, loading the model, decoding and encoding the photo);
- 1,000 photos to family rank: wall time and images/s, and that run's peak RSS.

The model: micro-vit-32's image and text towers with a 768-d projection (`embed_dim`
768), saved as a model dir. Its towers cost milliseconds per image on a CPU, so the
numbers are the label set's: reading it, scoring each image against all 867k columns
(768 x 867k multiply-adds per image), the softmax, the family sums and the rows. BioCLIP
2's ViT-L-14 would add its own image time (see predict_benchmark.py) and its 1.7 GB of
weights to both RSS measures, which the difference removes; the label-set work per image
is the same at the same embedding size. Precision is fp32 so no ONNX export is timed.

    .venv/bin/python benchmarks/labelset_benchmark.py                     # writes ~2.8 GB once
    .venv/bin/python benchmarks/labelset_benchmark.py --taxa 50000 --images 100   # a quick look

Prints one JSON line. The work folder (default: $TMPDIR/treeclip-labelset-bench) is kept
for the next run; `--fresh` rewrites it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATASET = "hf-hub:imageomics/TreeOfLife-200M"


def write_label_set(hub: Path, n: int, dim: int, seed: int = 0) -> Path:
    """The synthetic pair in the published layout of a Hugging Face cache; returns the folder."""
    repo = hub / "datasets--imageomics--TreeOfLife-200M"
    folder = repo / "snapshots" / ("0" * 40) / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    array = np.lib.format.open_memmap(folder / "txt_emb_species.npy.tmp", mode="w+", dtype=np.float32, shape=(dim, n))
    for c0 in range(0, n, 65536):  # unit columns, like published class embeddings
        block = rng.standard_normal((dim, min(n, c0 + 65536) - c0), dtype=np.float32)
        array[:, c0:c0 + block.shape[1]] = block / np.linalg.norm(block, axis=0, keepdims=True)
    array.flush()
    del array
    os.replace(folder / "txt_emb_species.npy.tmp", folder / "txt_emb_species.npy")
    (folder / "txt_emb_species.json").write_text(json.dumps(synthetic_names(n, rng)), encoding="utf-8")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return folder


def _word(i: int) -> str:
    """A distinct lower-case letter string for each number (names are letters, as real ones)."""
    letters = ""
    while True:
        i, r = divmod(i, 26)
        letters += chr(97 + r)
        if i == 0:
            return letters


def synthetic_names(n: int, rng: np.random.Generator) -> list:
    """`[[kingdom..epithet], common]` per taxon: 6 species a genus, 15 genera a family, ...,
    in a shuffled order (a published file need not be sorted by lineage)."""
    genus = rng.permutation(n) // 6
    family, epithet = genus // 15, rng.integers(0, 60_000, n)
    order, has_common = family // 6, rng.random(n) < 0.3
    entries = []
    for i in range(n):
        o = int(order[i])
        lineage = [f"Regnum{_word(o // 3000)}", f"Phylum{_word(o // 300)}", f"Classis{_word(o // 40)}",
                   f"Ordo{_word(o)}", f"Familia{_word(family[i])}ae", f"Genus{_word(genus[i])}",
                   f"epith{_word(int(epithet[i]))}a"]
        entries.append([lineage, f"common name {i}" if has_common[i] else ""])
    return entries


def write_tiny_set(folder: Path, dim: int) -> Path:
    """A label set of 2 taxa in the same layout: the model-alone baseline."""
    from treeclip.runtime.labelsets import write_label_set
    from treeclip.taxonomy.taxon import Taxon

    taxa = [Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "pica"),
            Taxon.of("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina")]
    emb = np.eye(2, dim, dtype=np.float32)
    write_label_set(folder, taxa, emb)
    return folder


def write_model(out: Path, dim: int) -> Path:
    """micro-vit-32's towers with a `dim`-d projection, saved as a model dir."""
    import torch

    from treeclip.model import save_model
    from treeclip.model.factory import ClipModel, build_clip
    from treeclip.model.registry import get_config

    config = get_config("micro-vit-32")
    config.pop("description")
    config["model_cfg"]["embed_dim"] = dim
    torch.manual_seed(0)
    return save_model(ClipModel(model=build_clip(config), name=f"micro-vit-32-{dim}", config=config), out)


def write_photos(folder: Path, n: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i:04d}.jpg", quality=85)
    return folder


def run_child(args: list[str], env: dict) -> dict:
    """Run `treeclip ARGS` as a child; its wall time and its own peak RSS (os.wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "treeclip.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"treeclip {' '.join(args)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return {"s": round(seconds, 2), "rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taxa", type=int, default=867_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "treeclip-labelset-bench")
    parser.add_argument("--fresh", action="store_true", help="Rewrite the label set, model and photos.")
    args = parser.parse_args()

    work = args.work
    stamp = work / "made.json"
    wanted = {"taxa": args.taxa, "dim": args.dim, "images": args.images}
    if args.fresh or not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
        shutil.rmtree(work, ignore_errors=True)
        t = time.perf_counter()
        write_label_set(work / "hub", args.taxa, args.dim)
        write_tiny_set(work / "tiny", args.dim)
        write_model(work / "model", args.dim)
        write_photos(work / "photos", args.images)
        stamp.write_text(json.dumps(wanted))
        print(f"wrote {work} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        # start again small: a child forked from this process (which now holds the label set) would
        # carry that RSS into its ru_maxrss across exec, and every RSS below would read ~2.9 GB
        os.execv(sys.executable, [sys.executable, *(a for a in sys.argv if a != "--fresh")])

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TREECLIP_HF_HUB": str(work / "hub")}
    env["TREECLIP_CACHE"] = str(work / "cache")
    shutil.rmtree(work / "cache", ignore_errors=True)  # cold: no cached columns
    common = [str(work / "model"), "--precision", "fp32", "-q", "--format", "csv", "-o", str(work / "out.csv"),
              "--overwrite"]
    one = [str(work / "photos" / "p0000.jpg")]
    cold = run_child(["predict", *common, *one, "--taxa", DATASET, "--rank", "family"], env)
    warm = run_child(["predict", *common, *one, "--taxa", DATASET, "--rank", "family"], env)
    alone = run_child(["predict", *common, *one, "--taxa", str(work / "tiny"), "--rank", "family"], env)
    many = run_child(["predict", *common, str(work / "photos"), "--taxa", DATASET, "--rank", "family"], env)
    print(json.dumps({
        "benchmark": "labelset", "n_taxa": args.taxa, "embed_dim": args.dim, "images": args.images,
        "model": f"micro-vit-32 towers, {args.dim}-d projection", "precision": "fp32",
        "startup_cold_s": cold["s"], "startup_warm_s": warm["s"], "startup_model_alone_s": alone["s"],
        "startup_above_model_s": round(warm["s"] - alone["s"], 2),
        "peak_rss_mb": warm["rss_mb"], "peak_rss_cold_mb": cold["rss_mb"], "model_alone_rss_mb": alone["rss_mb"],
        "rss_above_model_mb": round(warm["rss_mb"] - alone["rss_mb"], 1),
        "rss_above_model_cold_mb": round(cold["rss_mb"] - alone["rss_mb"], 1),
        "family_s": many["s"], "family_images_per_s": round(args.images / many["s"], 1),
        "family_peak_rss_mb": many["rss_mb"], "family_rss_above_model_mb": round(many["rss_mb"] - alone["rss_mb"], 1),
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
