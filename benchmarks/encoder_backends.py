"""Image-tower backends side by side, model only (preprocessed pixels in, embeddings out),
and the hardware ceiling they run against, in one run.

- GEMM throughput of this CPU at one thread: fp32 (torch/MKL), int8 u8s8 (ONNX Runtime
  `MatMulInteger`), bf16 (torch); and the tower's multiply-adds per image
  (`tower_flops` below), so ceiling img/s = threads x GEMM rate / FLOPs per image.
- img/s of: plain open_clip fp32 eager at batch 10 (torch's threads), and treeclip's
  `ImageEncoder` at fp32, bf16 and int8 (fixed-size calls, one thread each, `streams` side by
  side), ONNX Runtime fp32 of the same graph, OpenVINO fp32 and bf16 (when `openvino` is
  importable), torch.compile (inductor) of the fp32 path with --compile.

    .venv/bin/python benchmarks/encoder_backends.py                 # ~5 min on 2 cores
    .venv/bin/python benchmarks/encoder_backends.py --model micro-vit-32 --n 8 --rounds 1

The rounds alternate the order of the contenders; numbers are per-contender means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def tower_flops(visual, class_token_last: bool = True) -> float:
    """Multiply-adds x 2 of one image through a plain ViT tower (matrix products only):
    the ceiling analysis of docs/benchmarks.md divides measured GEMM throughput by this."""
    d = visual.conv1.out_channels
    patch = visual.conv1.kernel_size[0]
    grid = visual.positional_embedding.shape[0] - 1
    tokens = grid + 1
    layers = len(visual.transformer.resblocks)
    mlp = visual.transformer.resblocks[0].mlp.c_fc.out_features
    per_token = 4 * d * d + 2 * d * mlp
    block = tokens * per_token + 2 * tokens * tokens * d
    macs = grid * d * 3 * patch * patch + layers * block
    if class_token_last:
        macs -= (tokens - 1) * (per_token - 2 * d * d) + 2 * (tokens - 1) * tokens * d
    out = visual.proj.shape[1] if visual.proj is not None else 0
    return 2.0 * (macs + d * out)


def gemm_rates(m: int = 1970, k: int = 768, n: int = 3072) -> dict:
    """GFLOP/s (2 x multiply-adds) of one thread on a ViT-B-sized product, CPU time."""
    import torch

    def rate(fn) -> float:
        fn()
        start = time.thread_time()
        for _ in range(3):
            fn()
        return 3 * 2 * m * k * n / (time.thread_time() - start) / 1e9

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = {"fp32_torch": rate(lambda: a @ b)}
        ab, bb = a[:256].bfloat16(), b.bfloat16()  # small: emulated bf16 is very slow
        out["bf16_torch"] = rate(lambda: ab @ bb) * 256 / m
        out["fp32_onnxruntime"] = _ort_fp32_rate(m, k, n, rate)  # the exact path's other backend
        out["int8_onnxruntime"] = _ort_int8_rate(m, k, n, rate)
    finally:
        torch.set_num_threads(before)
    return out


def _ort_session(node, inputs, outputs, weights):
    """A one-thread ONNX Runtime session of a one-node graph."""
    import onnxruntime as ort
    from onnx import helper

    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs, weights),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _ort_fp32_rate(m: int, k: int, n: int, rate) -> float | None:
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    session = _ort_session(helper.make_node("MatMul", ["A", "W"], ["Y"]),
                           [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
                           [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
                           [numpy_helper.from_array(w, "W")])
    a = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    return rate(lambda: session.run(None, {"A": a}))


def _ort_int8_rate(m: int, k: int, n: int, rate) -> float | None:
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    w = np.random.default_rng(0).integers(-127, 127, (k, n)).astype(np.int8)
    session = _ort_session(helper.make_node("MatMulInteger", ["A", "W", "az"], ["Y"]),
                           [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
                           [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
                           [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(128, np.uint8), "az")])
    a = np.random.default_rng(1).integers(0, 255, (m, k)).astype(np.uint8)
    return rate(lambda: session.run(None, {"A": a}))


def openvino_runner(onnx_path: Path, precision: str, threads: int):
    """An OpenVINO CPU model of the exported fp32 graph, throughput mode (one stream per
    thread), or None without openvino. `precision`: f32 or bf16 (the inference hint)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    compiled = ov.Core().compile_model(str(onnx_path), "CPU", {
        "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads, "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision})
    queue = ov.AsyncInferQueue(compiled, threads)

    def run(pixels):
        x = pixels.numpy()
        for i in range(len(x)):
            queue.start_async({0: x[i:i + 1]})
        queue.wait_all()
    return run


def contenders(args, clip, workdir: Path) -> dict:
    import torch

    from treeclip.cache import CachePaths
    from treeclip.runtime.encoder import ImageEncoder, OnnxVisual

    threads = torch.get_num_threads()
    cache = CachePaths.default(workdir / "cache")
    plain = clip.model.visual.eval()

    def eager(pixels):
        with torch.no_grad():
            for s in range(0, len(pixels), 10):
                plain(pixels[s:s + 10])

    runs = {"open_clip_fp32_eager_batch10": eager}
    for precision in args.precisions:
        runs[f"treeclip_{precision}"] = ImageEncoder(clip, precision=precision, caches=cache)
    ort_fp32 = ImageEncoder(clip, precision="fp32", caches=cache)
    ort_fp32.visual, ort_fp32.precision = OnnxVisual(clip, "fp32", cache), "fp32"
    runs["onnxruntime_fp32"] = ort_fp32
    for hint in ("f32", "bf16"):
        ov_run = openvino_runner(ort_fp32.visual.path, hint, threads)
        if ov_run is not None:
            runs[f"openvino_{hint}"] = ov_run
    if args.compile:
        runs["treeclip_fp32_torch_compile"] = ImageEncoder(clip, precision="fp32", compile=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bioclip-vit-b-16")
    ap.add_argument("--n", type=int, default=16, help="images per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    ap.add_argument("--compile", action="store_true", help="also torch.compile the fp32 path (minutes to compile)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    import torch

    from treeclip.model import create_model
    from treeclip.runtime.precision import cpu_features

    clip = create_model(args.model, seed=0)
    size = clip.image_size
    pixels = torch.randn(args.n, 3, size, size)
    flops = tower_flops(clip.model.visual)
    results = {"model": args.model, "cpu_features": cpu_features().describe(), "threads": torch.get_num_threads(),
               "load_average_at_start": os.getloadavg()[0], "gflop_per_image": flops / 1e9,
               "gemm_gflops_one_thread": gemm_rates()}
    rates = results["gemm_gflops_one_thread"]
    results["ceiling_img_per_s"] = {k: v * 1e9 * results["threads"] / flops for k, v in rates.items() if v}
    with tempfile.TemporaryDirectory() as tmp:
        runs = contenders(args, clip, Path(tmp))
        for fn in runs.values():
            fn(pixels[:2])  # warm-up
        seconds = dict.fromkeys(runs, 0.0)
        for r in range(args.rounds):
            for who in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                start = time.perf_counter()
                runs[who](pixels)
                seconds[who] += time.perf_counter() - start
                print(f"  round {r + 1} {who}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    results["img_per_s"] = {who: args.n * args.rounds / s for who, s in seconds.items()}
    base = results["img_per_s"]["open_clip_fp32_eager_batch10"]
    results["vs_open_clip_eager"] = {who: v / base for who, v in results["img_per_s"].items()}
    results["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
