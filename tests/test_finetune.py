"""Fine-tuning a published model: `--pretrained hf-hub:ORG/NAME` from a local hub folder,
locked towers (open_clip's lock_image_tower / lock_text_tower), and trackers fed the
metrics.jsonl records (`--report-to tensorboard`)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from test_published import _model_files, _put
from train_helpers import make_dataset
from treeclip.cli import cli
from treeclip.errors import TreeclipError
from treeclip.model import create_model
from treeclip.model.factory import ClipModel, build_clip
from treeclip.model.registry import get_config
from treeclip.train.config import make_config
from treeclip.train.locks import lock_towers
from treeclip.train.loop import train
from treeclip.train.optim import make_optimizer
from treeclip.train.runs import changed_settings

FAST = dict(model="micro-vit-32", batch_size=32, lr=2e-3, warmup=1, workers=0, threads=1, progress=False,
            log_every=2, val_samples=32, label_set=False)
SPEC = "hf-hub:acme/micro-bioclip"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("finetune") / "ds", per_class=8, val_per_class=2)


def _published(seed: int, quick_gelu: bool = True) -> ClipModel:
    config = get_config("micro-vit-32")
    config.pop("description")
    config["model_cfg"]["quick_gelu"] = quick_gelu
    torch.manual_seed(seed)
    return ClipModel(model=build_clip(config), name="published", config=config)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> tuple[Path, ClipModel]:
    """A hub folder with `acme/micro-bioclip` (micro-vit-32, seed 7) and
    `acme/micro-gelu` (the same shapes, GELU instead of QuickGELU)."""
    root, tmp = tmp_path_factory.mktemp("hub"), tmp_path_factory.mktemp("staging")
    published = _published(7)
    _put(root / "models--acme--micro-bioclip", _model_files(published, tmp, True), "e" * 40)
    _put(root / "models--acme--micro-gelu", _model_files(_published(8, quick_gelu=False), tmp, True), "f" * 40)
    return root, published


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "open_clip_model.safetensors"))


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- hf-hub init ---------------------------------------------------------------------------
def test_training_starts_from_the_published_weights(dataset, hub, tmp_path, monkeypatch):
    root, published = hub
    # lr 0: the run's model is the published file, bit for bit (found through $TREECLIP_HF_HUB)
    monkeypatch.setenv("TREECLIP_HF_HUB", str(root))
    run = tmp_path / "still"
    train(make_config(data=str(dataset), out=str(run), steps=2, save_every=0, pretrained=SPEC,
                      **{**FAST, "lr": 0.0}))
    want = {k: v for k, v in published.model.state_dict().items()}
    got = _weights(run / "model")
    assert all(torch.equal(want[k], got[k]) for k in want)
    # the CLI with --hub-dir: trained from them (not from a random init)
    monkeypatch.delenv("TREECLIP_HF_HUB")
    moved = tmp_path / "moved"
    result = CliRunner().invoke(cli, ["train", str(dataset), "--out", str(moved), "--model", "micro-vit-32",
                                      "--pretrained", SPEC, "--hub-dir", str(root), "--steps", "2", "--batch-size",
                                      "32", "--workers", "0", "--threads", "1", "--no-progress", "--no-label-set"])
    assert result.exit_code == 0, result.output
    trained, random_init = _weights(moved / "model"), create_model("micro-vit-32", seed=0).model.state_dict()
    diff_published = max(float((trained[k] - want[k]).abs().max()) for k in want)
    diff_random = max(float((trained[k] - random_init[k]).abs().max()) for k in want)
    assert 0 < diff_published < diff_random
    # the hub folder is not part of the run: resuming with another one is no change
    settings = json.loads((moved / "config.json").read_text())
    assert changed_settings(moved, {**settings, "hub_dir": str(tmp_path / "elsewhere")}) == []


def test_published_specs_fail_with_one_line(dataset, hub, tmp_path):
    root, _ = hub
    with pytest.raises(TreeclipError, match="differs in quick_gelu"):
        train(make_config(data=str(dataset), out=str(tmp_path / "a"), steps=1, pretrained="hf-hub:acme/micro-gelu",
                          hub_dir=str(root), **FAST))
    with pytest.raises(TreeclipError, match=r"acme/absent.*models--acme--absent"):
        train(make_config(data=str(dataset), out=str(tmp_path / "b"), steps=1, pretrained="hf-hub:acme/absent",
                          hub_dir=str(root), **FAST))


# -- locked towers -------------------------------------------------------------------------
def _locked_run(dataset: Path, out: Path, **locks) -> tuple[dict, dict]:
    """(initial, final) weights of a 3-step run with `locks`."""
    initial = {k: v.clone() for k, v in create_model("micro-vit-32", seed=0).model.state_dict().items()}
    train(make_config(data=str(dataset), out=str(out), steps=3, save_every=0, **locks, **FAST))
    return initial, _weights(out / "model")


def _is_visual(name: str) -> bool:
    return name.startswith("visual.")


def _is_text(name: str) -> bool:
    return not _is_visual(name) and name != "logit_scale" and name != "attn_mask"


@pytest.mark.parametrize("groups,unlocked", [
    (0, set()),
    (1, {"visual.proj"}),
    (2, {"visual.proj", "visual.ln_post.weight", "visual.ln_post.bias", "visual.transformer.resblocks.1."})])
def test_lock_image_trains_only_the_unlocked_groups(dataset, tmp_path, groups, unlocked):
    before, after = _locked_run(dataset, tmp_path / "run", lock_image=True, lock_image_unlocked_groups=groups)
    changed = _changed(before, after)
    visual = {k for k in before if _is_visual(k)}
    expect = {k for k in visual if any(k == u or (u.endswith(".") and k.startswith(u)) for u in unlocked)}
    assert changed & visual == expect
    assert {k for k in changed if _is_text(k)}, "the text tower should train"


@pytest.mark.parametrize("layers,unlocked", [(0, set()), (1, {"text_projection"})])
def test_lock_text_trains_only_the_unlocked_layers(dataset, tmp_path, layers, unlocked):
    before, after = _locked_run(dataset, tmp_path / "run", lock_text=True, lock_text_unlocked_layers=layers)
    changed = _changed(before, after)
    assert {k for k in changed if _is_text(k)} == unlocked
    assert {k for k in changed if _is_visual(k)}, "the image tower should train"


def test_the_optimizer_holds_only_trainable_parameters():
    clip = create_model("micro-vit-32")
    lock_towers(clip.model, make_config(data="d", out="o", steps=1, lock_image=True, lock_image_unlocked_groups=1,
                                        lock_text=True))
    optimizer = make_optimizer(clip.model, lr=1e-3, weight_decay=0.2)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in clip.model.parameters() if p.requires_grad}
    assert held == trainable and trainable == {id(clip.model.visual.proj), id(clip.model.logit_scale)}
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]}
    assert decayed == {id(clip.model.visual.proj)}


def test_locked_resume_is_exact_and_exports_plain_open_clip(dataset, tmp_path):
    import open_clip

    locks = dict(lock_image=True, lock_image_unlocked_groups=2, lock_text=True, lock_text_unlocked_layers=1)
    full = tmp_path / "full"
    cfg = make_config(data=str(dataset), out=str(full), steps=6, save_every=3, keep_checkpoints=5,
                      text_type="mixed", **locks, **FAST)
    train(cfg)
    part = tmp_path / "part"  # as if killed after step 3
    shutil.copytree(full / "checkpoints" / "step-00000003", part / "checkpoints" / "step-00000003")
    shutil.copy(full / "metrics.jsonl", part / "metrics.jsonl")
    train(make_config(**{**cfg.as_dict(), "out": str(part)}), resume="latest")
    a, b = _weights(full / "model"), _weights(part / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{full / 'model'}")
    assert all(torch.equal(v, a[k]) for k, v in model.state_dict().items() if k in a)
    assert set(a) <= set(model.state_dict())


def test_bad_lock_settings_fail_with_one_line(dataset, tmp_path):
    with pytest.raises(TreeclipError, match="--lock-image-unlocked-groups / .* need --lock-image"):
        make_config(data="d", out="o", steps=1, lock_image_unlocked_groups=2)
    with pytest.raises(TreeclipError, match="--lock-text-unlocked-layers needs --lock-text"):
        make_config(data="d", out="o", steps=1, lock_text_unlocked_layers=1)
    with pytest.raises(TreeclipError, match="--lock-image-unlocked-groups: expected a count"):
        make_config(data="d", out="o", steps=1, lock_image=True, lock_image_unlocked_groups=-1)
    with pytest.raises(TreeclipError, match="--no-lock-text-freeze-layer-norm"):
        train(make_config(data=str(dataset), out=str(tmp_path / "r"), steps=1, lock_text=True,
                          lock_text_freeze_layer_norm=False, **FAST))


def test_locks_are_part_of_the_run_identity(dataset, tmp_path):
    run = tmp_path / "run"
    cfg = make_config(data=str(dataset), out=str(run), steps=1, lock_image=True, **FAST)
    train(cfg)
    assert changed_settings(run, {**cfg.as_dict(), "lock_image": False}) == ["lock_image"]
    assert changed_settings(run, {**cfg.as_dict(), "report_to": ["tensorboard"]}) == []


# -- trackers ------------------------------------------------------------------------------
def _scalars(run: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: duplicated steps {steps}"
    return {e.step: e.value for e in events}


def _f32(x: float) -> float:
    return float(np.float32(x))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_gets_the_metrics_jsonl_records_and_resumes(dataset, tmp_path):
    full = tmp_path / "full"
    cfg = make_config(data=str(dataset), out=str(full), steps=6, save_every=3, keep_checkpoints=5, val_every=3,
                      text_type="mixed", report_to=("tensorboard",), **FAST)
    train(cfg)
    rows = _metrics(full)
    train_rows = [r for r in rows if r["type"] == "train"]
    assert _scalars(full, "train/loss") == {r["step"]: _f32(r["loss"]) for r in train_rows}
    for field in ("lr", "logit_scale", "samples_per_s"):
        assert _scalars(full, f"train/{field}") == {r["step"]: _f32(r[field]) for r in train_rows}
    val_rows = [r for r in rows if r["type"] == "val"]
    assert _scalars(full, "val/zeroshot_top1") == {r["step"]: _f32(r["zeroshot_top1"]) for r in val_rows}
    assert _scalars(full, "val/val_loss") == {r["step"]: _f32(r["val_loss"]) for r in val_rows}
    drawn = {int(s): t for r in train_rows for s, t in r["text_types_by_step"].items()}
    assert sorted(drawn) == list(range(1, 7))
    assert _scalars(full, "train/text_type_index") == {s: float(cfg.text_types.index(t)) for s, t in drawn.items()}
    # killed after step 3 with its events up to step 6 on disk: the resumed run replaces them
    part = tmp_path / "part"
    shutil.copytree(full / "checkpoints" / "step-00000003", part / "checkpoints" / "step-00000003")
    shutil.copy(full / "metrics.jsonl", part / "metrics.jsonl")
    shutil.copytree(full / "tensorboard", part / "tensorboard")
    train(make_config(**{**cfg.as_dict(), "out": str(part)}), resume="latest")
    resumed = [r for r in _metrics(part) if r["type"] == "train"]
    assert [r["step"] for r in resumed] == [2, 4, 6]
    assert _scalars(part, "train/loss") == {r["step"]: _f32(r["loss"]) for r in resumed}


def test_trackers_fail_with_one_line(dataset, tmp_path):
    with pytest.raises(TreeclipError, match="--report-to: unknown tracker 'mlflow'"):
        make_config(data="d", out="o", steps=1, report_to="tensorboard,mlflow")
    assert make_config(data="d", out="o", steps=1, report_to="tensorboard").report_to == ("tensorboard",)
    with pytest.MonkeyPatch.context() as patch:  # as on a machine without wandb
        patch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else _find(name, *a))
        with pytest.raises(TreeclipError, match="--report-to wandb: the 'wandb' package is not installed"):
            train(make_config(data=str(dataset), out=str(tmp_path / "w"), steps=1, report_to=("wandb",), **FAST))
    assert not (tmp_path / "w").exists()  # refused before anything was written


_find = importlib.util.find_spec


def test_wandb_runs_offline_beside_metrics_jsonl(dataset, tmp_path, monkeypatch):
    """`--report-to wandb`: an offline run (no network) in OUT/wandb/, named by the run
    dir, its run file written; metrics.jsonl is the same as without a tracker."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    base = dict(data=str(dataset), steps=4, text_type="mixed", **FAST)
    train(make_config(out=str(tmp_path / "plain"), **base))
    train(make_config(out=str(tmp_path / "tracked"), report_to=("wandb",), **base))
    runs = list((tmp_path / "tracked" / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s") and k != "time"} for r in rows]  # noqa: E731
    assert strip(_metrics(tmp_path / "tracked")) == strip(_metrics(tmp_path / "plain"))
