"""Training: CLIP contrastive learning on taxonomic text (see `loop.train`).

    from treeclip.train import make_config, train
    train(make_config(preset="cpu-demo", data="data/synth", out="runs/demo"))
"""

from __future__ import annotations

from treeclip.train.config import TrainConfig, list_presets, make_config


def train(cfg: TrainConfig, *, resume: str | None = None) -> dict:
    """Run or resume a training run; see `treeclip.train.loop.train`."""
    from treeclip.train.loop import train as run

    return run(cfg, resume=resume)


__all__ = ["TrainConfig", "make_config", "list_presets", "train"]
