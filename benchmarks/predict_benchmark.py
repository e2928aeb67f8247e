"""Predict speed: treeclip's default CPU path against plain open_clip, and rank
aggregation against a per-image Python dict, measured in one run.

(a) Throughput, images -> top-5 species, on the same camera-sized JPEGs and the same
    model (ViT-B-16 QuickGELU, random weights, seed 0) and the same label embeddings:
    - baseline: plain open_clip fp32 eager at pybioclip's default batch size 10, the way
      pybioclip does it: open + convert each image in the main process, the model's
      preprocess, `encode_image`, softmax over the labels, top-k;
    - treeclip: `TreeOfLifeClassifier.predict` with its defaults (decoding with JPEG draft
      mode in worker processes overlapping with the model, batch 32, precision "fast":
      int8 through ONNX Runtime, bf16 on CPUs with bf16 units but no VNNI), and also its exact
      `precision="fp32"` path; top-1 agreement with the baseline is reported for each.
    Label embeddings are computed before timing for both (treeclip caches them on disk).
    The rounds alternate (baseline, treeclip, treeclip, baseline, ...) so that load from
    other processes falls on both; the ratio uses the summed times.
(b) Aggregation of species probabilities to family rank for 10,000 images x 100,000 taxa:
    treeclip's segment sum over lineage-sorted taxa against a per-image Python dict (the
    pybioclip approach, with Python floats, which is kinder to it than torch scalars). The
    dict reference is timed on a few images and extrapolated linearly (it is a loop per
    image); both are checked to give the same sums.

    .venv/bin/python benchmarks/predict_benchmark.py            # ~ a few minutes on 2 cores
    .venv/bin/python benchmarks/predict_benchmark.py --n 40 --rounds 1 --skip-aggregation
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """Camera-like JPEGs: smooth colour fields plus noise (so JPEG has real work)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0.002, 0.02, 3)
        base = np.stack([np.sin(xx * a + i), np.cos(yy * b + 2 * i), np.sin((xx + yy) * c)], -1)
        img = (base * 80 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        p = folder / f"photo{i:04d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(str(p))
    return paths


def synthetic_taxa(n: int, seed: int = 0):
    """n distinct taxa with a realistic fan-out (~5 kingdoms .. ~40k genera)."""
    from treeclip.taxonomy.taxon import Taxon

    rng = np.random.default_rng(seed)
    fan = [5, 60, 300, 1500, 8000, 40000]  # kingdoms, phyla, classes, orders, families, genera
    parent = [None] + [rng.integers(0, fan[i - 1], fan[i]) for i in range(1, len(fan))]
    letters = "KPCOFG"
    taxa = []
    for s, g in enumerate(rng.integers(0, fan[-1], n)):
        ids = [0] * 6
        ids[5] = int(g)
        for level in range(5, 0, -1):
            ids[level - 1] = int(parent[level][ids[level]])
        taxa.append(Taxon(tuple(f"{letters[i]}{ids[i]}" for i in range(6)) + (f"s{s}",), ""))
    return taxa


# -- (a) throughput -------------------------------------------------------------------------
def baseline_predict(model, preprocess, text_features, logit_scale, paths, batch_size=10, k=5):
    """pybioclip's loop with plain open_clip: fp32 eager, images opened in the main process."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    top1 = []
    with torch.no_grad():
        for s in range(0, len(paths), batch_size):
            imgs = [Image.open(p).convert("RGB") for p in paths[s:s + batch_size]]
            pixels = torch.stack([preprocess(im) for im in imgs])
            feats = F.normalize(model.encode_image(pixels), dim=-1)
            probs = F.softmax(logit_scale * feats @ text_features.T, dim=1)
            top = probs.topk(k, dim=1)
            top1.extend(top.indices[:, 0].tolist())
    return top1


def baseline_embed(model, preprocess, paths, batch_size=10):
    """Plain open_clip embeddings the same way: fp32 eager, batch 10, L2-normalised."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    out = []
    with torch.no_grad():
        for s in range(0, len(paths), batch_size):
            pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[s:s + batch_size]])
            out.append(F.normalize(model.encode_image(pixels), dim=-1))
    return torch.cat(out).numpy()


def bench_embed(args, clip, plain, preprocess, paths, workdir: Path) -> dict:
    """`treeclip embed` (exact fp32 default, and --precision fast) against plain open_clip."""
    from treeclip.cache import CachePaths
    from treeclip.predict.embed import embed_images
    from treeclip.runtime.options import InferenceOptions

    def treeclip(precision, some):
        return lambda: embed_images(clip, some, options=InferenceOptions.for_verb("embed", precision=precision),
                                    caches=CachePaths.default(workdir / "cache")).vectors

    baseline_embed(plain, preprocess, paths[:2])  # warm-up (and the fast path's one-off export)
    treeclip("fp32", paths[:2])()
    treeclip("fast", paths[:2])()
    runs = {"baseline": lambda: baseline_embed(plain, preprocess, paths), "fp32": treeclip("fp32", paths),
            "fast": treeclip("fast", paths)}
    seconds, vectors = timed_rounds(runs, args.rounds)
    images = len(paths) * args.rounds
    out = {"embed_baseline_img_per_s": images / seconds["baseline"]}
    for who in ("fp32", "fast"):
        out[f"embed_{who}_img_per_s"] = images / seconds[who]
        out[f"embed_{who}_speedup"] = seconds["baseline"] / seconds[who]
        out[f"embed_{who}_min_cosine_with_baseline"] = float((vectors["baseline"] * vectors[who]).sum(1).min())
    out["embed_fast_min_cosine_with_fp32"] = float((vectors["fp32"] * vectors["fast"]).sum(1).min())
    return out


def bench_trained(args) -> dict:
    """Agreement on a trained model (random weights agree more easily: their embeddings
    barely separate classes, so a small change seldom flips a top-1): the default `fast`
    path and the exact path's chosen backend against torch fp32, top-1 over the model's
    label set and the cosine of the embeddings, on the model's own kind of images."""
    from treeclip.cache import CachePaths
    from treeclip.predict import TreeOfLifeClassifier
    from treeclip.runtime.options import InferenceOptions

    paths = sorted(str(p) for p in Path(args.trained_images).rglob("*.jpg"))[:args.trained_n]
    caches = CachePaths.default(Path(tempfile.mkdtemp()))
    runs = {"torch_fp32": dict(precision="fp32", backend="torch"), "exact_auto": dict(precision="fp32"),
            "fast": dict(precision="fast"), "bf16": dict(precision="bf16")}
    top1, emb, backend = {}, {}, {}
    for who, opts in runs.items():
        clf = TreeOfLifeClassifier(args.trained, args.trained_taxa, options=InferenceOptions(**opts), caches=caches)
        probs = []
        for _batch, p, _ok, _err in clf.encoded_batches(paths):
            probs.append(p)
        top1[who] = np.concatenate(probs).argmax(1)
        emb[who] = clf.encoder(_pixels(clf, paths)).numpy()
        backend[who] = f"{clf.precision}/{clf.encoder.backend}"
    out = {"trained_model": args.trained, "trained_images": len(paths), "backends": backend}
    for who in ("exact_auto", "fast", "bf16"):
        out[f"{who}_top1_agreement_with_torch_fp32"] = float(np.mean(top1[who] == top1["torch_fp32"]))
        out[f"{who}_min_cosine_with_torch_fp32"] = float((emb[who] * emb["torch_fp32"]).sum(1).min())
        out[f"{who}_max_abs_with_torch_fp32"] = float(np.abs(emb[who] - emb["torch_fp32"]).max())
    return out


def _pixels(clf, paths):
    import torch
    from PIL import Image

    return torch.stack([clf.preprocess(Image.open(p).convert("RGB")) for p in paths])


def timed_rounds(runs: dict, rounds: int) -> tuple[dict, dict]:
    """Summed seconds of each contender over rounds whose order alternates; last outputs."""
    seconds, outputs = dict.fromkeys(runs, 0.0), {}
    for r in range(rounds):
        for who in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            outputs[who] = runs[who]()
            seconds[who] += time.perf_counter() - start
            print(f"  round {r + 1} {who}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return seconds, outputs


def bench_throughput(args, workdir: Path) -> dict:
    import open_clip

    from treeclip.model import create_model
    from treeclip.cache import CachePaths
    from treeclip.predict import TreeOfLifeClassifier
    from treeclip.runtime.options import InferenceOptions

    paths = make_photos(workdir / "photos", args.n, (args.width, args.height))
    clip = create_model(args.model, seed=0)
    # the same weights in a plain open_clip model made by open_clip itself
    plain, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16-quickgelu")
    plain.load_state_dict(clip.model.state_dict())
    plain.eval()
    taxa = synthetic_taxa(args.labels, seed=1)
    start = time.perf_counter()
    clf = TreeOfLifeClassifier(clip, taxa, options=InferenceOptions(templates="single"),  # precision "fast"
                               caches=CachePaths.default(workdir / "cache"))
    setup_s = time.perf_counter() - start  # label embeddings + (int8) the one-off ONNX export
    # the same label embeddings, in the classifier's (lineage-sorted) order, for the baseline
    text_features = clf._labels.clone()
    scale = clf.logit_scale
    contenders = {"treeclip": clf}
    if args.fp32 and clf.precision != "fp32":
        # treeclip's exact path as well (shares the label embeddings: the same cache entry)
        contenders["treeclip-fp32"] = TreeOfLifeClassifier(
            clip, taxa, options=InferenceOptions(templates="single", precision="fp32"),
            caches=CachePaths.default(workdir / "cache"))
    baseline_predict(plain, preprocess, text_features, scale, paths[:2])  # warm-up
    for c in contenders.values():
        c.predict(paths[:2], k=5)
    seconds = dict.fromkeys(["baseline", *contenders], 0.0)
    top1: dict[str, list] = {}
    names = [f"{t.genus} {t.species}" for t in clf.taxa]
    for r in range(args.rounds):
        order = ["baseline", *contenders] if r % 2 == 0 else [*contenders, "baseline"]
        for who in order:
            start = time.perf_counter()
            if who == "baseline":
                top1[who] = [names[i] for i in baseline_predict(plain, preprocess, text_features, scale, paths)]
            else:
                top1[who] = [row["species"] for row in contenders[who].predict(paths, rank="species", k=5)][::5]
            seconds[who] += time.perf_counter() - start
            print(f"  round {r + 1} {who}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    images = args.n * args.rounds
    out = {"images": args.n, "rounds": args.rounds, "image_size": f"{args.width}x{args.height}",
           "labels": args.labels, "model": args.model, "baseline_batch_size": 10,
           "treeclip_batch_size": clf.options.batch_size, "treeclip_precision": clf.precision,
           "treeclip_backend": clf.encoder.backend,
           "treeclip_setup_seconds_once": setup_s, "baseline_img_per_s": images / seconds["baseline"]}
    for who in contenders:
        out[f"{who}_backend"] = contenders[who].encoder.backend
        out[f"{who}_img_per_s"] = images / seconds[who]
        out[f"{who}_speedup"] = seconds["baseline"] / seconds[who]
        out[f"{who}_top1_agreement_with_baseline"] = float(np.mean([a == b for a, b in zip(top1["baseline"], top1[who])]))
    if args.embed:
        out.update(bench_embed(args, clip, plain, preprocess, paths, workdir))
    return out


def ceilings(model: str) -> dict:
    """The hardware's ceilings for the tower, in img/s on all cores: torch's fp32 GEMM
    rate (what open_clip runs) and the best backend's at each precision."""
    import torch

    from encoder_backends import gemm_rates, tower_flops
    from treeclip.model import create_model

    flops = tower_flops(create_model(model, seed=0).model.visual)
    rates = {k: v for k, v in gemm_rates().items() if v}
    best = {p: max((k for k in rates if k.startswith(p)), key=rates.get) for p in ("fp32", "bf16", "int8")}
    per_s = {k: v * 1e9 * torch.get_num_threads() / flops for k, v in rates.items()}
    return {"gemm_gflops_one_thread": rates, "gflop_per_image": flops / 1e9,
            "ceiling_img_per_s_torch_fp32": per_s["fp32_torch"],
            "ceiling_img_per_s_best": {p: {"backend": k, "img_per_s": per_s[k]} for p, k in best.items()}}


# -- (b) aggregation ----------------------------------------------------------------------------
def dict_reference(probs_row, keys):
    sums = collections.defaultdict(float)
    for p, key in zip(probs_row.tolist(), keys):
        sums[key] += p
    return sums


def bench_aggregation(args) -> dict:
    from treeclip.predict import aggregate as agg

    taxa = synthetic_taxa(args.taxa, seed=2)
    order = agg.sort_taxa(taxa)
    taxa = [taxa[i] for i in order]
    index = agg.RankIndex(taxa)
    t0 = time.perf_counter()
    groups = index.groups("family")
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    chunk = args.chunk
    logits = rng.standard_normal((chunk, len(taxa)), dtype=np.float32) * 2
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    n_chunks = -(-args.images // chunk)
    start = time.perf_counter()
    for _ in range(n_chunks):  # the same chunk each time: the cost does not depend on the values
        summed = index.aggregate(probs, "family")
        agg.top_k(summed, 5)
    vec_s = time.perf_counter() - start
    keys = [" ".join(t.lineage[:5]) for t in taxa]  # pybioclip joins the names into a dict key
    m = args.dict_images
    start = time.perf_counter()
    ref = [dict_reference(probs[i], keys) for i in range(m)]
    for sums in ref:
        sorted(sums.items(), key=lambda kv: -kv[1])[:5]
    dict_per_image = (time.perf_counter() - start) / m
    worst = 0.0
    for i in range(m):
        for g, gt in enumerate(groups.taxa):
            worst = max(worst, abs(ref[i][" ".join(gt.lineage[:5])] - float(summed[i, g])))
    return {
        "images": args.images, "taxa": len(taxa), "families": len(groups), "rank": "family",
        "treeclip_seconds": vec_s, "group_index_seconds": build_s,
        "dict_seconds_per_image": dict_per_image, "dict_images_timed": m,
        "dict_seconds_extrapolated": dict_per_image * args.images,
        "speedup": dict_per_image * args.images / vec_s, "max_abs_difference": worst,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="images per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1200)
    ap.add_argument("--model", default="bioclip-vit-b-16")
    ap.add_argument("--labels", type=int, default=300, help="taxa in the throughput label set")
    ap.add_argument("--taxa", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--dict-images", type=int, default=10)
    ap.add_argument("--fp32", action=argparse.BooleanOptionalAction, default=True,
                    help="also time treeclip's exact --precision fp32 path when the default is not fp32")
    ap.add_argument("--embed", action=argparse.BooleanOptionalAction, default=True,
                    help="also time `treeclip embed` (fp32 and fast) against plain open_clip embeddings")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-aggregation", action="store_true")
    ap.add_argument("--trained", help="a trained model dir: also measure agreement on it (e.g. a demo model)")
    ap.add_argument("--trained-taxa", help="its label taxa (a dir with taxa.parquet) when the model dir has none")
    ap.add_argument("--trained-images", help="a folder of its kind of images (e.g. a demo task's images/)")
    ap.add_argument("--trained-n", type=int, default=300)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from treeclip.runtime.precision import cpu_features

    flags = cpu_features()
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                           "cpu_features": flags.describe(), "cpu_features_source": flags.source,
                           "load_average_at_start": os.getloadavg()[0]}}
    if not args.skip_aggregation:
        results["aggregation"] = bench_aggregation(args)
        print(json.dumps(results["aggregation"], indent=2), flush=True)
    if not args.skip_throughput:
        results["ceilings"] = ceilings(args.model)
        print(json.dumps(results["ceilings"], indent=2), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            results["throughput"] = bench_throughput(args, Path(tmp))
        print(json.dumps(results["throughput"], indent=2), flush=True)
    if args.trained:
        results["trained"] = bench_trained(args)
        print(json.dumps(results["trained"], indent=2), flush=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(results["machine"], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
