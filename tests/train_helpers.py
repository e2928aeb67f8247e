"""A tiny learnable tree-of-life dataset for the training tests, written with the data
engineer's `write_dataset`: 8 species in 4 genera, each species drawn as its own colour
with a genus-specific stripe pattern plus per-image noise, on 32 px images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from treeclip.data.dataset import Sample, write_dataset
from treeclip.data.images import encode_jpeg
from treeclip.taxonomy.taxon import Taxon

GENERA = [("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica"),
          ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus"),
          ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus"),
          ("Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita")]
EPITHETS = [("hudsonia", "black-billed magpie"), ("pica", "Eurasian magpie"),
            ("corax", "common raven"), ("corone", "carrion crow"),
            ("alba", "white mulberry"), ("nigra", "black mulberry"),
            ("muscaria", "fly agaric"), ("phalloides", "death cap")]
TAXA = [Taxon.of(*GENERA[i // 2], EPITHETS[i][0], common=EPITHETS[i][1]) for i in range(8)]
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30),
           (200, 40, 200), (30, 200, 210), (250, 250, 250), (20, 20, 20)]


def draw(cls: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    img = np.zeros((size, size, 3), np.float32) + np.array(COLOURS[cls], np.float32)
    genus = cls // 2
    yy, xx = np.mgrid[:size, :size]
    stripes = [(yy // 4) % 2, (xx // 4) % 2, ((xx + yy) // 4) % 2, ((xx // 8 + yy // 8) % 2)][genus]
    img *= (0.55 + 0.45 * stripes)[..., None]
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_dataset(out: Path, *, per_class: int = 24, val_per_class: int = 4, seed: int = 0,
                 shard_max_samples: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    samples = []
    for cls in range(len(TAXA)):
        for i in range(per_class + val_per_class):
            split = "val" if i >= per_class else "train"
            samples.append(Sample(f"c{cls}i{i:03d}", encode_jpeg(draw(cls, rng), quality=90), TAXA[cls], split,
                                  source="test", source_id=f"{cls}-{i}"))
    order = rng.permutation(len(samples))  # interleave classes inside the shards
    write_dataset([samples[i] for i in order], out, taxa=TAXA, build_info={"by": "tests/train_helpers.py"},
                  shard_max_samples=shard_max_samples)
    return out


def kill_after_checkpoint(args: list[str], run: Path, step: int = 3) -> None:
    """Run `python -m treeclip <args>` (a training into `run`) in a separate process and
    kill it without warning (SIGKILL) once its checkpoint at `step` exists."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "treeclip", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / f"step-{step:08d}").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def resume_latest(run: Path):
    """`treeclip train --out RUN --resume latest` (settings from the run dir alone); its result."""
    from click.testing import CliRunner

    from treeclip.cli import cli

    result = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "latest", "--no-progress"])
    assert result.exit_code == 0, result.output
    return result
