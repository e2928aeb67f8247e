"""Several weighted training sources (taxa merged) and BioCLIP 2's experience replay:
draws in proportion to size x weight, exact resume, a replay projection that trains and
stays out of the exported model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from treeclip.errors import TreeclipError
from treeclip.train.config import make_config
from treeclip.train.loop import train
from treeclip.train.order import Plan
from treeclip.train.sources import Sources, merge_taxa
from treeclip.taxonomy.taxon import Taxon
from train_helpers import GENERA, TAXA, draw, kill_after_checkpoint, make_dataset, resume_latest

FAST = dict(model="micro-vit-32", batch_size=16, lr=2e-3, warmup=2, workers=0, threads=1, progress=False,
            log_every=2, val_samples=16, label_set=False)
NEW = Taxon.of(*GENERA[3], "virosa", common="destroying angel")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("src") / "ds", per_class=8, val_per_class=1)


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """A small second source: a new taxon (local class 0) and one of `TAXA` (local class 1)."""
    from treeclip.data.dataset import Sample, write_dataset
    from treeclip.data.images import encode_jpeg

    rng = np.random.default_rng(5)
    out = tmp_path_factory.mktemp("src") / "other"
    samples = [Sample(f"o{c}i{i}", encode_jpeg(draw(6 if c == 0 else 7, rng), quality=90), taxon,
                      "val" if i == 4 else "train", source="test", source_id=f"o{c}{i}")
               for c, taxon in enumerate([NEW, TAXA[7]]) for i in range(5)]
    write_dataset(samples, out, taxa=[NEW, TAXA[7]], build_info={"by": "test"}, shard_max_samples=4)
    return out


@pytest.fixture(scope="module")
def replay_data(tmp_path_factory) -> Path:
    """A tiny general image-caption webdataset (`jpg` + `txt`, no taxonomy)."""
    import webdataset as wds
    from PIL import Image
    from treeclip.data.images import encode_jpeg

    out = tmp_path_factory.mktemp("replay")
    rng = np.random.default_rng(9)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
    shapes = ["a square", "a striped cloth", "a wall", "a sunset"]
    with wds.ShardWriter(str(out / "replay-%04d.tar"), maxcount=8, verbose=0) as sink:
        for i in range(16):
            name, rgb = list(colours.items())[i % 4]
            img = np.clip(np.array(rgb, np.float32) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            sink.write({"__key__": f"r{i:03d}", "jpg": encode_jpeg(Image.fromarray(img), quality=90),
                        "txt": f"a photo of {shapes[i // 4]} in {name}"})
    return out


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "open_clip_model.safetensors"))


def _state(run: Path, step: int) -> dict:
    return torch.load(run / "checkpoints" / f"step-{step:08d}" / "state.pt", weights_only=True)


def _resume_is_exact(cfg, tmp_path: Path, step: int) -> Path:
    """Run `cfg` fully, then again from its checkpoint at `step`; assert the same model."""
    full = Path(cfg.out)
    train(cfg)
    part = tmp_path / "part"
    shutil.copytree(full / "checkpoints" / f"step-{step:08d}", part / "checkpoints" / f"step-{step:08d}")
    shutil.copy(full / "metrics.jsonl", part / "metrics.jsonl")
    train(make_config(**{**cfg.as_dict(), "out": str(part)}), resume="latest")
    a, b = _weights(full / "model"), _weights(part / "model")
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    return part


# -- several weighted sources ---------------------------------------------------------------


def test_merged_taxa_keep_the_first_sources_classes():
    taxa, labels = merge_taxa([TAXA, [NEW, TAXA[7]]])
    assert taxa == [*TAXA, NEW]
    assert labels[0].tolist() == list(range(8)) and labels[1].tolist() == [8, 7]


def test_sources_are_drawn_by_size_times_weight_from_the_seed(dataset, other):
    sources = Sources.open([str(dataset), str(other)], [1, 4])
    n_other = 8
    source = sources.source_of_shard[sources.index.shard]
    assert (source == 1).sum() == n_other and len(sources.index) == 64 + n_other
    plan = Plan(len(sources.index), 16, seed=3, weights=sources.probabilities)
    drawn = np.concatenate([[i for i, _, _ in plan.micro_batches(s)[0]] for s in range(400)])
    expected = n_other * 4 / (64 + n_other * 4)
    assert abs((source[drawn] == 1).mean() - expected) < 0.03
    again = Plan(len(sources.index), 16, seed=3, weights=sources.probabilities)
    assert again.micro_batches(123) == plan.micro_batches(123)  # a function of (seed, step): exact resume
    # the second source's samples carry the merged classes (its own 0, 1 -> 8, 7)
    from treeclip.train.data import ShardSamples

    samples = ShardSamples(sources.index, lambda image: torch.zeros(1), relabel=sources.relabel)
    classes = {samples.load(int(j), "taxon")[2] for j in np.flatnonzero(source == 1)}
    assert classes == {7, 8}


def test_weighted_sources_train_with_the_taxon_aware_loss_and_resume_exactly(dataset, other, tmp_path):
    cfg = make_config(data=str(dataset), extra_data=[str(other)], data_weights="1,4", out=str(tmp_path / "full"),
                      steps=4, save_every=2, keep_checkpoints=5, loss="taxon-aware", **FAST)
    assert cfg.data_weights == (1.0, 4.0) and json.loads(json.dumps(cfg.as_dict()))["extra_data"] == [str(other)]
    _resume_is_exact(cfg, tmp_path, 2)


@pytest.mark.parametrize("settings, message", [
    (dict(data_weights="1,4,2"), "3 weight"),
    (dict(data_weights="1,0"), "> 0"),
    (dict(data_weights="1,x"), "numbers"),
    (dict(objective="ce"), "clip objective"),
])
def test_bad_source_settings_fail_with_one_line(dataset, other, tmp_path, settings, message):
    with pytest.raises(TreeclipError, match=message):
        make_config(data=str(dataset), extra_data=[str(other)], out=str(tmp_path / "r"), steps=1,
                    **{**FAST, **settings})


def test_the_cli_takes_extra_data_and_weights(dataset, other, tmp_path):
    from click.testing import CliRunner
    from treeclip.cli import cli

    result = CliRunner().invoke(cli, ["train", str(dataset), "--extra-data", str(other), "--data-weights", "1,2,3",
                                      "--out", str(tmp_path / "r"), "--steps", "1", "--no-progress"])
    assert result.exit_code != 0 and "3 weight(s) for 2 data source(s)" in result.output


# -- experience replay ----------------------------------------------------------------------


def test_replay_changes_the_loss_trains_its_projection_and_exports_plain_open_clip(dataset, replay_data, tmp_path):
    import open_clip

    base = dict(data=str(dataset), steps=4, save_every=2, keep_checkpoints=5, **FAST)
    plain = train(make_config(out=str(tmp_path / "plain"), **base))
    cfg = make_config(out=str(tmp_path / "replay"), replay_data=str(replay_data), replay_ratio=0.25, **base)
    part = _resume_is_exact(cfg, tmp_path, 2)  # bit-exact resume with replay on
    replayed = json.loads((tmp_path / "replay" / "summary.json").read_text())
    assert replayed["final_loss"] != plain["final_loss"]
    a, b = _weights(tmp_path / "plain" / "model"), _weights(tmp_path / "replay" / "model")
    assert a.keys() == b.keys()  # no replay projection in the exported model
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # the replay projection trains, apart from the model's, and is restored on resume
    s2, s4 = _state(tmp_path / "replay", 2), _state(tmp_path / "replay", 4)
    assert s2["replay_step"] == 2 and s4["replay_step"] == 4
    assert not torch.equal(s2["replay_proj"], s4["replay_proj"])
    assert not torch.equal(s4["replay_proj"], b["visual.proj"])
    assert torch.equal(_state(part, 4)["replay_proj"], s4["replay_proj"])
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'replay' / 'model'}")
    assert set(model.state_dict()) == set(b)


@pytest.mark.parametrize("settings, message", [
    (dict(replay_ratio=1.0), "share"),
    (dict(accum_steps=2), "--accum"),
    (dict(objective="ce"), "ce objective"),
])
def test_bad_replay_settings_fail_with_one_line(dataset, replay_data, tmp_path, settings, message):
    with pytest.raises(TreeclipError, match=message):
        make_config(data=str(dataset), replay_data=str(replay_data), out=str(tmp_path / "r"), steps=1,
                    **{**FAST, **settings})


@pytest.mark.slow
def test_sigkill_then_resume_is_exact_with_weighted_sources_and_replay(dataset, other, replay_data, tmp_path):
    """A run drawing from two weighted sources with experience replay, killed without
    warning after a checkpoint (a separate process) and resumed from its run dir alone,
    ends with the weights and the replay projection of the same run uninterrupted."""
    from click.testing import CliRunner

    from treeclip.cli import cli

    def command(run: Path) -> list[str]:
        return ["train", str(dataset), "--extra-data", str(other), "--data-weights", "1,3", "--replay-data",
                str(replay_data), "--replay-ratio", "0.25", "--out", str(run), "--model", "micro-vit-32",
                "--batch-size", "16", "--lr", "2e-3", "--warmup", "2", "--workers", "0", "--threads", "1",
                "--steps", "12", "--save-every", "3", "--val-every", "0", "--no-label-set", "--no-progress"]

    killed = tmp_path / "killed"
    kill_after_checkpoint(command(killed), killed)
    resume_latest(killed)
    full = tmp_path / "full"
    assert CliRunner().invoke(cli, command(full)).exit_code == 0
    a, b = _weights(full / "model"), _weights(killed / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(_state(full, 12)["replay_proj"], _state(killed, 12)["replay_proj"])
