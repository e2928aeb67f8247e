"""Image-tower backends side by side, model only (preprocessed pixels in, embeddings out),
and the hardware ceiling they run against, in one run.

- GEMM throughput of this CPU at one thread: fp32 (torch/MKL, ONNX Runtime, OpenVINO), int8
  u8s8 (ONNX Runtime `MatMulInteger`), bf16 (torch, OpenVINO); and the tower's multiply-adds
  per image (`tower_flops` below), so ceiling img/s = threads x GEMM rate / FLOPs per image.
- img/s of: plain open_clip fp32 eager at batch 10 (torch's threads), and treeclip's
  `ImageEncoder` (fixed-size calls, one thread each, `streams` side by side) at int8 and, on
  each backend, fp32 and bf16: torch, ONNX Runtime (fp32), OpenVINO (when `openvino` is
  importable), torch.compile (inductor) with --compile; and what `--backend auto` chose.

    .venv/bin/python benchmarks/encoder_backends.py                 # ~5 min on 2 cores
    .venv/bin/python benchmarks/encoder_backends.py --model micro-vit-32 --n 8 --rounds 1

The rounds alternate the order of the contenders; numbers are per-contender means.
"""

from __future__ import annotations

import argparse
import importlib.util
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
    """GFLOP/s (2 x multiply-adds) of one thread on a ViT-B-sized product: CPU time, except
    OpenVINO's (wall time: it computes on a thread of its own)."""
    import torch

    def rate(fn, clock=time.thread_time) -> float:
        fn()
        start = clock()
        for _ in range(3):
            fn()
        return 3 * 2 * m * k * n / (clock() - start) / 1e9

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = {"fp32_torch": rate(lambda: a @ b)}
        ab, bb = a[:256].bfloat16(), b.bfloat16()  # small: emulated bf16 is very slow
        out["bf16_torch"] = rate(lambda: ab @ bb) * 256 / m
        out["fp32_onnxruntime"] = _ort_fp32_rate(m, k, n, rate)  # the exact path's other backends
        for hint in ("f32", "bf16"):
            out[f"{hint.replace('f32', 'fp32')}_openvino"] = _openvino_rate(m, k, n, hint, rate)
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


def _matmul_graph(m: int, k: int, n: int):
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    return (helper.make_node("MatMul", ["A", "W"], ["Y"]), [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])], [numpy_helper.from_array(w, "W")])


def _ort_fp32_rate(m: int, k: int, n: int, rate) -> float | None:
    if importlib.util.find_spec("onnx") is None:
        return None
    session = _ort_session(*_matmul_graph(m, k, n))
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


def _openvino_rate(m: int, k: int, n: int, hint: str, rate) -> float | None:
    try:
        import openvino as ov
        from onnx import helper
    except ImportError:
        return None
    node, inputs, outputs, weights = _matmul_graph(m, k, n)
    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs, weights),
                              opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "matmul.onnx"
        path.write_bytes(model.SerializeToString())
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": 1,
                                                              "INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    a = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    return rate(lambda: request.infer({0: a}), clock=time.perf_counter)


def contenders(args, clip, workdir: Path) -> dict:
    import torch

    from treeclip.cache import CachePaths
    from treeclip.runtime.encoder import ImageEncoder
    from treeclip.runtime.precision import openvino_available

    cache = CachePaths.default(workdir / "cache")
    plain = clip.model.visual.eval()

    def eager(pixels):
        with torch.no_grad():
            for s in range(0, len(pixels), 10):
                plain(pixels[s:s + 10])

    runs = {"open_clip_fp32_eager_batch10": eager}
    backends = ["torch"] + (["openvino"] if openvino_available() else [])
    for precision in args.precisions:
        if precision == "int8":
            runs["treeclip_int8_onnxruntime"] = ImageEncoder(clip, precision="int8", caches=cache)
            continue
        for backend in backends + (["onnxruntime"] if precision == "fp32" else []):
            runs[f"treeclip_{precision}_{backend}"] = ImageEncoder(clip, precision=precision, caches=cache,
                                                                   backend=backend)
        if args.compile:
            runs[f"treeclip_{precision}_torch_compile"] = ImageEncoder(clip, precision=precision, compile=True,
                                                                       backend="torch")
        chosen = ImageEncoder(clip, precision=precision, caches=cache, compile=args.compile)
        print(f"  {precision}: --backend auto chose {chosen.backend}", file=sys.stderr)
        args.chosen[precision] = chosen.backend
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
    args.chosen = results["auto_chose"] = {}
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
