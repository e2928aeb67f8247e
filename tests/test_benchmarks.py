"""Helpers the benchmarks compute their numbers with (they live in benchmarks/, not in
the product): checked here so a speed claim never rests on a wrong count."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tower_flops_count_the_matrix_products():
    """The ceiling analysis's FLOPs per image equal what torch's FLOP counter sees."""
    from torch.utils.flop_counter import FlopCounterMode

    from treeclip.model import create_model
    tower_flops = _benchmark("encoder_backends").tower_flops

    visual = create_model("micro-vit-32", seed=0).model.visual.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        visual(torch.zeros(1, 3, 32, 32))
    # the counter sees the linear layers and the patch convolution; attention runs in a fused
    # kernel it does not count: q @ k.T and weights @ v, 2 x 17 x 17 x 64 multiply-adds a layer
    attention = 2 * 2 * 17 * 17 * 64 * len(visual.transformer.resblocks)
    assert tower_flops(visual, class_token_last=False) == counter.get_total_flops() + attention
    assert tower_flops(visual) < tower_flops(visual, class_token_last=False)
