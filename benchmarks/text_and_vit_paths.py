"""open_clip's own text and image paths against treeclip's rewrites of them, in one run.

- Text: texts/s of open_clip's `CLIP.encode_text` (every caption padded to the 77-token
  context) vs treeclip's `ClipModel.encode_texts` (captions grouped by token length, each
  group trimmed to its longest: `model.factory.encode_tokens` / `_encode_trimmed`), both
  tokenizing and L2-normalising, up to 256 captions a call, on taxon captions of the five text
  types BioCLIP mixes (common names to full seven-rank names).
- Image: images/s of open_clip's `visual` vs `runtime.vit.FastVisual` (class-token-only
  last block, one-pass QuickGELU, fused attention): fp32, one thread, batch 1.

The ViT-B-16 architecture with random weights (speed does not depend on the weights),
one torch thread throughout; the contenders take turns call by call (a caption batch, an
image), and rates are given per wall second and per CPU second of the calling thread (the
steadier of the two on a shared CPU). Also prints the CPU's
flags that decide the kernels (avx2, avx512f, avx512_bf16, avx512_vnni, amx).

    .venv/bin/python benchmarks/text_and_vit_paths.py              # ~1.5 min on one loaded core
    .venv/bin/python benchmarks/text_and_vit_paths.py --texts 64 --images 4 --rounds 1 --bf16
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return {"model": model, **{f: f in flags for f in FLAGS}}


def taxon_captions(n: int, seed: int = 0) -> list[str]:
    """`n` training captions: random taxa of the synthetic tree, random mixed text types."""
    from treeclip.taxonomy.taxon import MIXED_TEXT_TYPES, RANKS, Taxon

    with open(ROOT / "src" / "treeclip" / "data" / "synth_taxa.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row = rng.choice(rows)
        taxon = Taxon.of(*(row[r] for r in RANKS), common=row["common"])
        out.append(taxon.caption(rng.choice(MIXED_TEXT_TYPES)))
    return out


def _clip(model):
    """open_clip's ViT-B-16 as a treeclip `ClipModel` (same module, treeclip's encoders)."""
    import open_clip
    from open_clip.model import get_model_preprocess_cfg

    from treeclip.model.factory import ClipModel

    pp = dict(get_model_preprocess_cfg(model))
    pp.setdefault("resize_mode", "shortest")
    pp.setdefault("interpolation", "bicubic")
    pp.setdefault("fill_color", 0)
    config = {"model_cfg": open_clip.get_model_config("ViT-B-16"), "preprocess_cfg": pp}
    return ClipModel(model=model, name="ViT-B-16", config=config)


def _alternate(contenders: dict, calls: list[tuple]) -> dict:
    """Total wall and CPU (this thread) seconds of each contender over `calls`, the
    contenders taking turns call by call, first one then the other first: load that comes
    and goes (a shared CPU) falls on both alike."""
    times = {k: {"wall": 0.0, "cpu": 0.0} for k in contenders}
    names = list(contenders)
    for i, args in enumerate(calls):
        for name in (names if i % 2 == 0 else names[::-1]):
            wall, cpu = time.perf_counter(), time.thread_time()
            contenders[name](*args)
            times[name]["cpu"] += time.thread_time() - cpu
            times[name]["wall"] += time.perf_counter() - wall
    return times


def _ratios(rates: dict, ours: str, theirs: str) -> dict:
    return {clock: rates[ours][clock] / rates[theirs][clock] for clock in ("wall", "cpu")}


def bench_text(clip, captions: list[str], rounds: int, batch: int = 256) -> dict:
    import torch
    import torch.nn.functional as F

    model, tok = clip.model, clip.tokenizer

    @torch.inference_mode()
    def original() -> torch.Tensor:
        return torch.cat([F.normalize(model.encode_text(tok(captions[i:i + batch])).float(), dim=-1)
                          for i in range(0, len(captions), batch)])

    def rewrite() -> torch.Tensor:
        return clip.encode_texts(captions, batch_size=batch)

    a, b = original(), rewrite()  # warm-up, and the two agree
    diff = float((a - b).abs().max())
    times = _alternate({"open_clip encode_text": original, "treeclip encode_texts": rewrite}, [()] * rounds)
    rates = {k: {clock: len(captions) * rounds / t for clock, t in v.items()} for k, v in times.items()}
    lengths = (tok(captions).argmax(dim=-1) + 1).float()
    return {"texts_per_s": rates, "ratio": _ratios(rates, "treeclip encode_texts", "open_clip encode_text"),
            "max_abs_diff": diff, "captions": len(captions), "mean_tokens": float(lengths.mean()),
            "max_tokens": int(lengths.max()), "context": int(tok(captions[:1]).shape[1])}


def bench_vit(model, n_images: int, rounds: int, dtype=None) -> dict:
    import copy

    import torch

    from treeclip.runtime.vit import FastVisual

    visual = model.visual.eval() if dtype is None else copy.deepcopy(model.visual).to(dtype).eval()
    fast = FastVisual(visual).eval()
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
    pixels = torch.randn(n_images, 1, 3, size, size, generator=torch.Generator().manual_seed(0))
    if dtype is not None:
        pixels = pixels.to(dtype)
    with torch.inference_mode():
        diff = float((visual(pixels[0]).float() - fast(pixels[0]).float()).abs().max())  # warm-up too
        fast(pixels[0])
        times = _alternate({"open_clip visual": visual, "treeclip FastVisual": fast},
                           [(x,) for _ in range(rounds) for x in pixels])
    rates = {k: {clock: n_images * rounds / t for clock, t in v.items()} for k, v in times.items()}
    return {"images_per_s": rates, "ratio": _ratios(rates, "treeclip FastVisual", "open_clip visual"),
            "max_abs_diff": diff, "images": n_images, "batch": 1}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=128, help="captions to encode (default 128)")
    ap.add_argument("--images", type=int, default=16, help="images, one at a time (default 16)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the captions and images (default 2)")
    ap.add_argument("--bf16", action="store_true", help="also the image towers in bf16 (the `bf16` path)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    import open_clip
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16").eval()
    clip = _clip(model)
    t0 = time.perf_counter()
    out = {"cpu": cpu_flags(), "torch": torch.__version__, "open_clip": open_clip.__version__, "threads": 1,
           "text": bench_text(clip, taxon_captions(args.texts), args.rounds),
           "image": bench_vit(model, args.images, args.rounds)}
    if args.bf16:
        out["image_bf16"] = bench_vit(model, args.images, args.rounds, dtype=torch.bfloat16)
    out["seconds"] = round(time.perf_counter() - t0, 1)

    cpu = out["cpu"]
    print(f"CPU: {cpu.get('model', '?')}; flags: "
          + ", ".join(f"{f} {'yes' if cpu.get(f) else 'no'}" for f in FLAGS) + f"; torch {out['torch']}, "
          f"open_clip {out['open_clip']}, 1 thread")
    t = out["text"]
    print(f"text  ({t['captions']} captions, mean {t['mean_tokens']:.1f} / max {t['max_tokens']} tokens of "
          f"{t['context']}):")
    for k, v in t["texts_per_s"].items():
        print(f"  {k:24s} {v['wall']:8.1f} texts/s wall, {v['cpu']:8.1f} per CPU s")
    print(f"  ratio treeclip/open_clip {t['ratio']['wall']:.2f}x wall, {t['ratio']['cpu']:.2f}x CPU   "
          f"max |diff| {t['max_abs_diff']:.1e}")
    for key, dtype in (("image", "fp32"), ("image_bf16", "bf16")):
        if key not in out:
            continue
        i = out[key]
        print(f"image ({i['images']} images, batch 1, {dtype}):")
        for k, v in i["images_per_s"].items():
            print(f"  {k:24s} {v['wall']:8.2f} images/s wall, {v['cpu']:8.2f} per CPU s")
        print(f"  ratio treeclip/open_clip {i['ratio']['wall']:.2f}x wall, {i['ratio']['cpu']:.2f}x CPU   "
              f"max |diff| {i['max_abs_diff']:.1e}")
    print(f"({out['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
