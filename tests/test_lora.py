"""LoRA through peft (`treeclip train --lora-rank R`): only the adapters (and logit_scale)
train, every base weight stays bit-identical, resume is exact, and `model/` is the LoRA
merged into a plain open_clip model with the adapter alone in `model/lora/`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("peft")

from train_helpers import kill_after_checkpoint, make_dataset, resume_latest  # noqa: E402
from treeclip.cli import cli  # noqa: E402
from treeclip.errors import TreeclipError  # noqa: E402
from treeclip.model import create_model, load_model  # noqa: E402
from treeclip.train.config import make_config  # noqa: E402
from treeclip.train.loop import train  # noqa: E402
from treeclip.train.runs import changed_settings  # noqa: E402
from treeclip.train.state import load_checkpoint  # noqa: E402
from treeclip.train.trainer import Trainer  # noqa: E402
from treeclip.runtime.distributed import DistInfo  # noqa: E402

FAST = dict(model="micro-vit-32", batch_size=32, lr=2e-3, warmup=1, workers=0, threads=1, progress=False,
            log_every=2, val_samples=32, label_set=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("lora") / "ds", per_class=8, val_per_class=2)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _base_name(key: str) -> str:
    """A peft-wrapped parameter's name in the plain model."""
    return key.replace("base_layer.", "").replace("parametrizations.", "").replace(".original", "")


def _single(dataset: Path, out: Path, **kw) -> Trainer:
    return Trainer(make_config(data=str(dataset), out=str(out), steps=1, **{**FAST, **kw}),
                   DistInfo())


def test_only_adapters_train_and_the_merged_export_is_plain_open_clip(dataset, tmp_path):
    import open_clip

    run = tmp_path / "run"
    init = {k: v.clone() for k, v in create_model("micro-vit-32", seed=0).model.state_dict().items()}
    # lr high enough that the adapters move the embeddings visibly in 4 steps
    cfg = make_config(data=str(dataset), out=str(run), steps=4, save_every=0, lora_rank=4, **{**FAST, "lr": 1e-2})
    train(cfg)
    # the last checkpoint holds the adapter-applied model: base weights bit-identical to the init
    state, _ = load_checkpoint(run / "checkpoints" / "step-00000004")
    base = {_base_name(k): v for k, v in state.items() if "lora_" not in k}
    assert set(base) == set(init)
    assert [k for k in init if not torch.equal(init[k], base[k])] == ["logit_scale"]
    adapters = {k: v for k, v in state.items() if "lora_B" in k}
    assert adapters and any(v.abs().max() > 0 for v in adapters.values())  # B starts at 0: it trained
    # model/: a plain open_clip local-dir model, the LoRA merged in
    model_dir = run / "model"
    merged = _weights(model_dir / "open_clip_model.safetensors")
    assert set(merged) == set(init)
    changed = {k for k in init if not torch.equal(init[k], merged[k])}
    assert any(".attn.in_proj_weight" in k for k in changed) and any(".mlp.c_fc.weight" in k for k in changed)
    assert not any(".out_proj." in k or "ln_" in k or k.endswith("bias") for k in changed)
    plain, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    # the same embeddings as the adapter-applied model (the training model, reloaded from its checkpoint)
    trainer = _single(dataset, tmp_path / "x", lora_rank=4)
    trainer.model.load_state_dict(state)
    trainer.model.eval()
    plain.eval()
    images = torch.randn(4, 3, 32, 32)
    texts = trainer.clip.tokenizer(["a photo of Felis catus", "Animalia Chordata", "a bird", "x"])
    with torch.no_grad():
        for a, b in ((trainer.model.encode_image(images), plain.encode_image(images)),
                     (trainer.model.encode_text(texts), plain.encode_text(texts))):
            assert float((a - b).abs().max()) <= 1e-5
    assert float((load_model(str(model_dir)).model.state_dict()["logit_scale"] - merged["logit_scale"]).abs()) == 0
    # model/lora/: the adapter alone, peft's format, loadable onto the base model
    from peft import PeftModel

    adapter = model_dir / "lora"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    saved = _weights(adapter / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    base_model = create_model("micro-vit-32", seed=0).model
    with torch.no_grad():
        base_model.logit_scale.copy_(merged["logit_scale"])
    reloaded = PeftModel.from_pretrained(base_model, str(adapter)).eval()
    with torch.no_grad():
        assert float((reloaded.base_model.model.encode_image(images) - plain.encode_image(images)).abs().max()) <= 1e-5


def test_the_optimizer_holds_adapters_and_logit_scale_and_locks_compose(dataset, tmp_path):
    trainer = _single(dataset, tmp_path / "a", lora_rank=2)
    held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    assert held == {id(p) for n, p in named.items() if "lora_" in n or n == "logit_scale"}
    assert any(n.startswith("visual.") and "lora_" in n for n in named)
    # --lock-image: no adapters in the image tower; its unlocked projection trains in full
    trainer = _single(dataset, tmp_path / "b", lora_rank=2, lock_image=True, lock_image_unlocked_groups=1)
    named = dict(trainer.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert not any(n.startswith("visual.") and "lora_" in n for n in trainable)
    assert not any(n.startswith("visual.") and "lora_" in n and "attn" not in n for n in named)  # only q/k/v (suffix)
    assert {n for n in trainable if "lora_" not in n} == {"logit_scale", "visual.proj"}
    assert any("lora_" in n for n in trainable)


def test_resume_from_a_middle_checkpoint_is_exact(dataset, tmp_path):
    full = tmp_path / "full"
    cfg = make_config(data=str(dataset), out=str(full), steps=6, save_every=3, keep_checkpoints=5,
                      text_type="mixed", lora_rank=4, lora_targets=("c_fc", "c_proj"), lora_dropout=0.1, **FAST)
    train(cfg)
    part = tmp_path / "part"  # as if the run had died after step 3
    shutil.copytree(full / "checkpoints" / "step-00000003", part / "checkpoints" / "step-00000003")
    shutil.copy(full / "metrics.jsonl", part / "metrics.jsonl")
    train(make_config(**{**cfg.as_dict(), "out": str(part)}), resume="latest")
    for name in ("model/open_clip_model.safetensors", "model/lora/adapter_model.safetensors"):
        a, b = _weights(full / name), _weights(part / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the LoRA settings are part of the run identity
    assert changed_settings(full, {**cfg.as_dict(), "lora_rank": 8}) == ["lora_rank"]


def _cli(dataset: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "treeclip", "train", str(dataset), "--out", str(run), "--model", "micro-vit-32",
            "--batch-size", "16", "--lr", "2e-3", "--warmup", "3", "--workers", "0", "--threads", "1",
            "--no-progress", "--no-label-set", *extra]


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(dataset, tmp_path):
    common = ("--steps", "12", "--save-every", "3", "--text-type", "mixed-sample", "--lora-rank", "4",
              "--lora-alpha", "4")
    killed = tmp_path / "killed"
    kill_after_checkpoint(_cli(dataset, killed, *common)[3:], killed)
    resume_latest(killed)
    full = tmp_path / "full"
    CliRunner().invoke(cli, _cli(dataset, full, *common)[3:], catch_exceptions=False)
    for name in ("model/open_clip_model.safetensors", "model/lora/adapter_model.safetensors"):
        a, b = _weights(full / name), _weights(killed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_bad_lora_settings_fail_with_one_line(dataset, tmp_path, monkeypatch):
    with pytest.raises(TreeclipError, match="--lora-rank: expected a rank >= 0"):
        make_config(data="d", out="o", steps=1, lora_rank=-1)
    with pytest.raises(TreeclipError, match="need --lora-rank > 0"):
        make_config(data="d", out="o", steps=1, lora_alpha=8)
    with pytest.raises(TreeclipError, match="--lora-dropout: expected a probability"):
        make_config(data="d", out="o", steps=1, lora_rank=2, lora_dropout=1.5)
    with pytest.raises(TreeclipError, match="--lora-rank: LoRA trains the CLIP objective only"):
        make_config(data="d", out="o", steps=1, lora_rank=2, objective="ce")
    assert make_config(data="d", out="o", steps=1, lora_rank=2, lora_targets="c_fc, c_proj").lora_targets == \
        ("c_fc", "c_proj")
    with pytest.raises(TreeclipError, match="--lora-targets nope: no linear layer"):
        _single(dataset, tmp_path / "a", lora_rank=2, lora_targets=("nope",))
    with pytest.raises(TreeclipError, match="--lora-dropout: peft cannot drop out a weight target"):
        _single(dataset, tmp_path / "b", lora_rank=2, lora_dropout=0.1)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    result = CliRunner().invoke(cli, ["train", str(dataset), "--out", str(tmp_path / "c"), "--steps", "1",
                                      "--lora-rank", "2", "--no-progress"])
    assert result.exit_code != 0 and "the 'peft' package is not installed" in result.output
