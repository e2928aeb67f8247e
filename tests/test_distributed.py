"""Two CPU processes with gloo agree with one process on the same global batch: the
local loss with gather-with-grad (spawned workers), and a whole `treeclip train` step
(torchrun)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from treeclip.train.loss import contrastive_loss
from train_helpers import make_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _features(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(8, 6, generator=g)
    txt = torch.randn(8, 6, generator=g)
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4])
    return img, txt, labels


def _single_process_grads(taxon_aware: bool):
    img, txt, labels = _features()
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale = torch.tensor(2.0, requires_grad=True)
    loss = contrastive_loss(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), scale, labels,
                            taxon_aware=taxon_aware, distributed=False)
    loss.backward()
    return loss.detach(), img.grad, txt.grad, scale.grad


def _rank_worker(rank: int, world: int, port: int, taxon_aware: bool, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    img, txt, labels = _features()
    n = img.shape[0] // world
    mine = slice(rank * n, (rank + 1) * n)
    img, txt = img[mine].clone().requires_grad_(True), txt[mine].clone().requires_grad_(True)
    scale = torch.tensor(2.0, requires_grad=True)
    loss = contrastive_loss(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), scale, labels[mine],
                            taxon_aware=taxon_aware)
    loss.backward()
    # DistributedDataParallel averages parameter gradients over ranks: do the same
    grads = [img.grad, txt.grad, scale.grad.reshape(1), loss.detach().reshape(1)]
    for g in grads[2:]:
        dist.all_reduce(g)
        g /= world
    torch.save(grads, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("taxon_aware", [False, True])
def test_local_loss_with_gathered_features_matches_one_process(tmp_path, taxon_aware):
    mp.start_processes(_rank_worker, args=(2, _free_port(), taxon_aware, str(tmp_path)), nprocs=2,
                       start_method="fork", join=True)
    loss, img_grad, txt_grad, scale_grad = _single_process_grads(taxon_aware)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    # a rank's feature gradient sums every rank's loss through the gather; the global loss
    # is the mean of the rank losses (what DDP's gradient averaging optimises): divide by 2
    assert torch.allclose(torch.cat([r0[0], r1[0]]) / 2, img_grad, atol=1e-6)
    assert torch.allclose(torch.cat([r0[1], r1[1]]) / 2, txt_grad, atol=1e-6)
    assert torch.allclose(r0[2], scale_grad.reshape(1), atol=1e-6)
    assert torch.allclose(r0[3], loss.reshape(1), atol=1e-6)


def _train_cmd(launcher: list[str], data: Path, out: Path, *options: str) -> list[str]:
    return [*launcher, "-m", "treeclip", "train", str(data), "--out", str(out), "--model", "micro-vit-32",
            "--batch-size", "16", "--steps", "2", "--lr", "1e-3", "--warmup", "1", "--workers", "0",
            "--threads", "1", "--save-every", "0", "--val-every", "0", "--no-progress", "--text-type", "mixed",
            *options]


def _train_worker(rank: int, world: int, port: int, cfg_dict: dict) -> None:
    from treeclip.train import make_config, train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    train(make_config(**cfg_dict))


def _max_weight_diff(a_dir: Path, b_dir: Path, name: str = "open_clip_model.safetensors") -> float:
    from safetensors.torch import load_file

    a = load_file(str(a_dir / name))
    b = load_file(str(b_dir / name))
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("options", [{}, {"dataset_resampled": True, "compact_vocab": True, "cache_images": True},
                                     {"objective": "hier-ce", "cache_images": True}],
                         ids=["plain", "resampled-compact-cached", "hier-ce"])
def test_two_gloo_processes_train_like_one(tmp_path, options):
    import open_clip  # noqa: F401  imported once here rather than in each forked worker
    from treeclip.train import make_config, train

    data = make_dataset(tmp_path / "ds", per_class=4, val_per_class=1, shard_max_samples=8)
    settings = dict(data=str(data), model="micro-vit-32", batch_size=16, steps=2, lr=1e-3, warmup=1, workers=0,
                    threads=1, save_every=0, val_every=0, progress=False, text_type="mixed-sample",
                    loss="taxon-aware", **options)
    mp.start_processes(_train_worker, args=(2, _free_port(), {**settings, "out": str(tmp_path / "two")}),
                       nprocs=2, start_method="fork", join=True)
    one = train(make_config(**settings, out=str(tmp_path / "one")))
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5)
    # Adam moves every weight by about lr per step; agreement far below lr = 1e-3 is the
    # same step up to float reduction order (gloo all-reduce vs one matmul)
    assert _max_weight_diff(tmp_path / "one" / "model", tmp_path / "two" / "model") < 1e-4
    if "objective" in options:  # the classifier heads too
        assert _max_weight_diff(tmp_path / "one" / "model", tmp_path / "two" / "model",
                                "classifier.safetensors") < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("options", [(), ("--dataset-resampled", "--compact-vocab", "--cache-images"),
                                     ("--lock-image", "--lock-image-unlocked-groups", "2", "--lock-text",
                                      "--report-to", "tensorboard")],
                         ids=["plain", "resampled-compact-cached", "locked-towers"])
def test_torchrun_two_processes_match_one_process(tmp_path, options):
    data = make_dataset(tmp_path / "ds", per_class=4, val_per_class=1, shard_max_samples=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())]
    two = subprocess.run(_train_cmd(torchrun, data, tmp_path / "two", *options), env=env, capture_output=True,
                         text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(_train_cmd([sys.executable], data, tmp_path / "one", *options), env=env,
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    assert _max_weight_diff(tmp_path / "one" / "model", tmp_path / "two" / "model") < 1e-4
