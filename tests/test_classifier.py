"""The classification baselines of the paper's objective ablation (`train --objective ce |
hier-ce`): they learn, export a plain open_clip model plus their heads, leave the text
tower untouched, resume exactly, and the evaluation scores them by their head."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from treeclip.train.config import make_config
from treeclip.train.loop import train
from train_helpers import TAXA, make_dataset
from treeclip.cache import CachePaths

FAST = dict(model="micro-vit-32", batch_size=32, lr=2e-3, warmup=5, workers=0, threads=1, progress=False,
            log_every=5, val_samples=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("classifier") / "ds")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("objective", ["ce", "hier-ce"])
def test_classifier_learns_and_exports_open_clip_plus_heads(dataset, tmp_path, objective):
    import open_clip

    from treeclip.model import create_model
    from treeclip.model.heads import has_heads, read_species_head

    run = tmp_path / objective
    summary = train(make_config(data=str(dataset), out=str(run), steps=24, objective=objective, val_every=12,
                                save_every=12, **FAST))
    assert summary["top1"] > 0.5  # chance is 1/8
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert [v["step"] for v in val] == [12, 24] and all("zeroshot_top1" not in v for v in val)

    # the model dir: plain open_clip loads it; the heads sit beside it with the training classes
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{run / 'model'}")
    assert has_heads(run / "model") and has_heads(run / "best")
    head = read_species_head(run / "model")
    assert head.objective == objective and head.classes == TAXA and head.weights.shape == (8, 64)
    ranks = json.loads((run / "model" / "classifier.json").read_text())["ranks"]
    assert ranks == (["species"] if objective == "ce" else
                     ["kingdom", "phylum", "class", "order", "family", "genus", "species"])
    hier = _weights(run / "model" / "classifier.safetensors")
    if objective == "hier-ce":  # 3 kingdoms, 4 genera in the test tree
        assert hier["kingdom.weight"].shape[0] == 3 and hier["genus.weight"].shape[0] == 4

    # only the image tower trained: the text tower and CLIP's temperature are the initialisation
    init = create_model("micro-vit-32", seed=0).model.state_dict()
    trained = model.state_dict()
    text = [k for k in init if not k.startswith("visual.")]
    assert text and all(torch.equal(init[k], trained[k]) for k in text)
    assert any(not torch.equal(init[k], trained[k]) for k in init if k.startswith("visual."))


@pytest.mark.parametrize("objective", ["ce", "hier-ce"])
def test_classifier_resume_from_a_middle_checkpoint_is_exact(dataset, tmp_path, objective):
    full = tmp_path / "full"
    cfg = make_config(data=str(dataset), out=str(full), steps=8, save_every=4, keep_checkpoints=5, val_every=4,
                      objective=objective, cache_images=True, **FAST)
    train(cfg)
    part = tmp_path / "part"  # as if the run had died after step 4
    shutil.copytree(full / "checkpoints" / "step-00000004", part / "checkpoints" / "step-00000004")
    shutil.copy(full / "metrics.jsonl", part / "metrics.jsonl")
    shutil.copytree(full / "best", part / "best")
    train(make_config(**{**cfg.as_dict(), "out": str(part)}), resume="latest")
    for name in ("open_clip_model.safetensors", "classifier.safetensors"):
        a, b = _weights(full / "model" / name), _weights(part / "model" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (full / "model" / "classifier.json").read_bytes() == (part / "model" / "classifier.json").read_bytes()


def test_classifier_accumulation_equals_the_whole_batch(dataset, tmp_path):
    runs = {}
    for accum in (1, 2):
        runs[accum] = tmp_path / f"a{accum}"
        train(make_config(data=str(dataset), out=str(runs[accum]), steps=3, objective="hier-ce", accum_steps=accum,
                          val_every=0, **FAST))
    for name in ("open_clip_model.safetensors", "classifier.safetensors"):
        a, b = _weights(runs[1] / "model" / name), _weights(runs[2] / "model" / name)
        for k in a:
            assert torch.allclose(a[k], b[k], atol=2e-5), f"{name}:{k}"


def test_evaluation_scores_a_classifier_by_its_head(dataset, tmp_path):
    """A classifier model gets its head's top-1 on tasks whose classes it was trained on,
    no zero-shot (its text tower never trained), and few-shot like any model."""
    from treeclip.evaluate.runner import EvalConfig, head_metrics, run_evaluation
    from treeclip.evaluate.tasks import load_task
    from treeclip.model.heads import read_species_head

    run = tmp_path / "ce"
    train(make_config(data=str(dataset), out=str(run), steps=24, objective="ce", val_every=0, **FAST))
    task_dir = _task_of(dataset, tmp_path / "task")
    results = run_evaluation([str(run / "model")], [str(task_dir)],
                             EvalConfig(shots=(0, 1), intrinsic=False, progress=False, caches=CachePaths(tmp_path / "c")),
                             tmp_path / "eval")
    assert results["zero_shot"] == {} and results["models"][0]["objective"] == "ce"
    top1 = results["classifier"]["model"]["task"]["top1"]
    assert top1 > 0.5 and "1" in results["few_shot"]["model"]
    assert "Classifier head top-1" in (tmp_path / "eval" / "report.md").read_text()

    # classes the head never saw: no head number
    head = read_species_head(run / "model")
    task = load_task(str(task_dir))
    foreign = type(head)(head.objective, head.weights[:4], head.classes[:4])
    x = np.zeros((len(task), head.weights.shape[1]), np.float32)
    assert head_metrics(foreign, task, x, task.labels) is None


def _task_of(dataset: Path, out: Path) -> Path:
    """A task folder of the dataset's val images (catalog.csv + task.toml)."""
    import csv

    from treeclip.data.dataset import read_catalog
    from train_helpers import draw

    rng = np.random.default_rng(7)
    (out / "images").mkdir(parents=True)
    rows = []
    for cls, taxon in enumerate(TAXA):
        for i in range(6):
            rel = f"images/c{cls}_{i}.jpg"
            draw(cls, rng).save(out / rel, quality=90)
            rows.append({"path": rel, **taxon.as_dict()})
    with open(out / "catalog.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "task.toml").write_text('name = "task"\n[images]\ncatalog = "catalog.csv"\nroot = "."\n'
                                   '[classes]\nrank = "species"\n')
    assert read_catalog(dataset) is not None
    return out


def test_a_damaged_head_is_one_clear_error(dataset, tmp_path):
    from treeclip.errors import TreeclipError
    from treeclip.model.heads import HEADS_FILE, read_species_head

    run = tmp_path / "ce"
    train(make_config(data=str(dataset), out=str(run), steps=2, objective="ce", val_every=0, **FAST))
    path = run / "model" / HEADS_FILE
    path.write_bytes(path.read_bytes()[:40])  # cut short
    with pytest.raises(TreeclipError, match="unreadable classifier head"):
        read_species_head(run / "model")


def test_a_run_started_before_objectives_existed_resumes(dataset, tmp_path):
    """A config.json written before `objective` existed means the default, clip."""
    from treeclip.train.runs import changed_settings

    run = tmp_path / "old"
    cfg = make_config(data=str(dataset), out=str(run), steps=2, **FAST)
    run.mkdir()
    old = {k: v for k, v in cfg.as_dict().items() if k != "objective"}
    (run / "config.json").write_text(json.dumps(old))
    assert changed_settings(run, cfg.as_dict()) == []
    assert changed_settings(run, {**cfg.as_dict(), "objective": "ce"}) == ["objective"]
