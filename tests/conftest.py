"""Fixtures shared by the whole suite.

- `TREECLIP_CACHE` points at a temporary folder for the whole run.
- Thread counts are set per test (one torch thread unless a test asks for more) and put
  back afterwards, so no test depends on what an earlier one left behind.
- `cpu_features`: forces the precision policy's view of the CPU (`TREECLIP_CPU_FEATURES`),
  so every branch of the policy runs on any machine.
- `trained`: a tiny model trained on the synthetic tree of life, for agreement tests of the
  fast paths (random weights make near-ties and prove little).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    """Every cache a test (or a process it starts) writes goes to a temporary root, never
    to the user's ~/.cache/treeclip."""
    import os
    import tempfile

    os.environ["TREECLIP_CACHE"] = tempfile.mkdtemp(prefix="treeclip-test-cache-")


def pytest_unconfigure(config) -> None:
    import os
    import shutil

    shutil.rmtree(os.environ.get("TREECLIP_CACHE", ""), ignore_errors=True)

FEATURE_SETS = {
    "avx2": "avx2",                                        # AMD EPYC, AVX2 only
    "avx512": "avx2,avx512",                               # AVX-512 without bf16 units
    "avx512_bf16": "avx2,avx512,avx512_bf16,vnni",         # AMD EPYC Genoa-like
    "bf16_no_vnni": "avx2,avx512,avx512_bf16",             # bf16 units without int8 ones (fast = bf16)
    "amx": "avx2,avx512,avx512_bf16,amx,vnni",             # Intel Sapphire Rapids-like
}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts and ends at one torch thread; a test that wants more sets them."""
    import torch

    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _library_logging():
    """Every test starts with treeclip's loggers as a library user has them (propagating to
    the root logger, where pytest's `caplog` sees them), whatever a CLI test configured."""
    import logging

    from treeclip.log import ROOT, TqdmStderrHandler

    logger = logging.getLogger(ROOT)
    yield
    for handler in [h for h in logger.handlers if isinstance(h, TqdmStderrHandler)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


@pytest.fixture(params=sorted(FEATURE_SETS))
def cpu_features(request, monkeypatch):
    """Each CPU class in turn, as the precision policy sees it; yields its name."""
    monkeypatch.setenv("TREECLIP_CPU_FEATURES", FEATURE_SETS[request.param])
    return request.param


@dataclass
class Trained:
    """A trained micro model with held-out images and the label embeddings of its species."""

    clip: object
    pixels: object          # (n, 3, H, W) preprocessed held-out images
    labels: object          # (n_species, dim) L2-normalised label embeddings
    truth: object           # (n,) species index of each image
    data: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """micro-vit-32 trained for 100 steps on 24 synthetic species (about 25 s on 2 cores)."""
    import numpy as np
    import torch

    from treeclip.data.images import decode_image
    from treeclip.data.synth import SynthConfig, synthesize
    from treeclip.evaluate.tasks import load_task
    from treeclip.model import load_model
    from treeclip.train import make_config, train

    torch.set_num_threads(2)  # session setup, before any test's own thread count
    root = tmp_path_factory.mktemp("trained")
    synthesize(root / "data", SynthConfig(species=24, images_per_species=32, eval_images_per_species=6,
                                          image_size=32, unseen_fraction=0.0, unseen_genus_fraction=0.0,
                                          workers=1))
    train(make_config(data=str(root / "data"), out=str(root / "run"), model="micro-vit-32", steps=100,
                      batch_size=64, lr=2e-3, warmup=6, text_type="mixed-sample", workers=0, threads=2,
                      progress=False, save_every=0, val_every=0, val_samples=64))
    clip = load_model(str(root / "run" / "model"))
    task = load_task(str(root / "data" / "tasks" / "synth-seen"))
    pixels = torch.stack([clip.preprocess(decode_image(task.image_path(i))) for i in range(len(task))])
    captions = [f"a photo of {c.taxon.name('taxon_com')}." for c in task.classes]
    labels = clip.encode_texts(captions)
    torch.set_num_threads(1)
    return Trained(clip, pixels, labels, torch.from_numpy(np.asarray(task.labels)), root / "data")
