"""`treeclip train`: it learns, exports a model plain open_clip loads, resumes exactly
after SIGKILL, and gradient accumulation equals the whole batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from treeclip.errors import TreeclipError
from treeclip.train.config import make_config
from treeclip.train.data import Plan
from treeclip.train.loop import train
from train_helpers import TAXA, kill_after_checkpoint, make_dataset, resume_latest

FAST = dict(model="micro-vit-32", batch_size=32, lr=2e-3, warmup=5, workers=0, threads=1, progress=False,
            log_every=5, val_samples=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train") / "ds")


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    name = "open_clip_model.safetensors" if (model_dir / "open_clip_model.safetensors").exists() else "model.safetensors"
    return load_file(str(model_dir / name))


def test_training_learns_and_exports_a_plain_open_clip_model(dataset, tmp_path):
    import open_clip

    run = tmp_path / "run"
    cfg = make_config(data=str(dataset), out=str(run), steps=24, text_type="mixed-sample", save_every=12,
                      val_every=12, **FAST)
    summary = train(cfg)
    train_rows = [r for r in _metrics(run) if r["type"] == "train"]
    val_rows = [r for r in _metrics(run) if r["type"] == "val"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20, 24]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 1.0  # starts near ln(32) = 3.47
    assert [r["step"] for r in val_rows] == [12, 24]
    assert summary["zeroshot_top1"] > 0.5  # chance is 1/8
    assert summary["skipped_samples"] == 0

    # the exported dir: plain open_clip, same embeddings as treeclip, same zero-shot
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{run / 'model'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{run / 'model'}")
    from treeclip.model import load_model
    from train_helpers import draw
    import numpy as np

    clip = load_model(str(run / "model"))
    images = [draw(c, np.random.default_rng(100 + c)) for c in range(8)]
    captions = [t.caption("taxon_com") for t in TAXA]
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
        txt = model.encode_text(tokenizer(captions), normalize=True)
    assert torch.allclose(img, clip.encode_images(torch.stack([clip.preprocess(i) for i in images])), atol=1e-6)
    assert torch.allclose(txt, clip.encode_texts(captions), atol=1e-6)
    assert (img @ txt.T).argmax(dim=1).eq(torch.arange(8)).float().mean() > 0.5
    assert (run / "best" / "open_clip_model.safetensors").is_file()
    meta = json.loads((run / "model" / "treeclip.json").read_text())
    assert meta["meta"]["architecture"] == "micro-vit-32" and meta["meta"]["summary"]["steps"] == 24


def test_gradient_accumulation_and_checkpointing_equal_the_plain_step(dataset, tmp_path):
    runs = {}
    for name, extra in (("plain", {}), ("accum", {"accum_steps": 4}), ("ckpt", {"grad_checkpointing": True})):
        cfg = make_config(data=str(dataset), out=str(tmp_path / name), steps=2, save_every=0, text_type="mixed",
                          **extra, **FAST)
        runs[name] = train(cfg)
    plain = _weights(tmp_path / "plain" / "model")
    for name in ("accum", "ckpt"):
        assert runs[name]["final_loss"] == pytest.approx(runs["plain"]["final_loss"], rel=1e-5)
        other = _weights(tmp_path / name / "model")
        for k in plain:
            assert torch.allclose(plain[k], other[k], atol=2e-5), (name, k)


def test_bf16_autocast_trains(dataset, tmp_path):
    summary = train(make_config(data=str(dataset), out=str(tmp_path / "bf16"), steps=2, save_every=0,
                                precision="bf16", **FAST))
    assert torch.isfinite(torch.tensor(summary["final_loss"]))
    assert (tmp_path / "bf16" / "model" / "open_clip_model.safetensors").is_file()


def test_plan_is_a_function_of_seed_and_step():
    plan = Plan(100, 20, seed=3, world_size=2, accum_steps=1, text_type="mixed")
    again = Plan(100, 20, seed=3, world_size=2, rank=1, text_type="mixed")
    assert plan.batches_per_epoch == 5
    r0, r1 = plan.micro_batches(7)[0], again.micro_batches(7)[0]
    assert len(r0) == len(r1) == 10 and not {i for i, _, _ in r0} & {i for i, _, _ in r1}
    assert len({t for _, t, _ in r0 + r1}) == 1  # one text type per global batch, same on both ranks
    epoch0 = {i for s in range(5) for i, _, _ in Plan(100, 20, seed=3).micro_batches(s)[0]}
    assert epoch0 == set(range(100))  # an epoch visits every sample once
    mixed = Plan(100, 20, seed=3, text_type="mixed-sample").micro_batches(0)[0]
    assert len({t for _, t, _ in mixed}) > 1
    with pytest.raises(TreeclipError, match="must divide"):
        Plan(100, 20, seed=0, world_size=3)


def _cli(dataset: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "treeclip", "train", str(dataset), "--out", str(run), "--model", "micro-vit-32",
            "--batch-size", "16", "--lr", "2e-3", "--warmup", "3", "--workers", "0", "--threads", "1",
            "--no-progress", *extra]


def test_resume_from_a_middle_checkpoint_is_exact(dataset, tmp_path):
    import shutil

    full = tmp_path / "full"
    cfg = make_config(data=str(dataset), out=str(full), steps=8, save_every=4, keep_checkpoints=5,
                      text_type="mixed", **FAST)
    train(cfg)
    part = tmp_path / "part"  # as if the run had died after step 4
    shutil.copytree(full / "checkpoints" / "step-00000004", part / "checkpoints" / "step-00000004")
    shutil.copy(full / "metrics.jsonl", part / "metrics.jsonl")
    summary = train(make_config(**{**cfg.as_dict(), "out": str(part)}), resume="latest")
    assert summary["steps"] == 8
    a, b = _weights(full / "model"), _weights(part / "model")
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert [r["step"] for r in _metrics(part) if r["type"] == "train"] == [5, 8]  # lines after step 4 redone once


@pytest.mark.slow
@pytest.mark.parametrize("options", [(), ("--dataset-resampled", "--compact-vocab", "--cache-images"),
                                     ("--objective", "hier-ce", "--cache-images"),
                                     ("--lock-image", "--lock-image-unlocked-groups", "1", "--lock-text",
                                      "--lock-text-unlocked-layers", "2", "--report-to", "tensorboard")],
                         ids=["plain", "resampled-compact-cached", "hier-ce", "locked-tensorboard"])
def test_resume_after_sigkill_is_exact(dataset, tmp_path, options):
    from click.testing import CliRunner

    from treeclip.cli import cli

    common = ("--steps", "12", "--save-every", "3", "--text-type", "mixed-sample", "--val-every", "0", *options)
    # the run, killed without warning once a checkpoint exists (a separate process)...
    killed = tmp_path / "killed"
    kill_after_checkpoint(_cli(dataset, killed, *common)[3:], killed)
    assert not (killed / "model").exists()
    # ...resumed from its run dir alone (settings come from its config.json)
    assert "resuming" in resume_latest(killed).output
    # the same run, uninterrupted
    full = tmp_path / "full"
    CliRunner().invoke(cli, _cli(dataset, full, *common)[3:], catch_exceptions=False)
    a, b = _weights(full / "model"), _weights(killed / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    steps = [r["step"] for r in _metrics(killed) if r["type"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # no duplicated log lines


def test_compact_vocabulary_is_exact_and_exports_the_full_vocabulary(dataset, tmp_path):
    import open_clip

    from treeclip.model import create_model, load_model
    from treeclip.model.factory import CompactEmbedding, compact_text_vocabulary
    from treeclip.train.data import caption_token_ids

    clip = create_model("micro-vit-32", seed=3)
    ids = caption_token_ids(dataset, clip.tokenizer)
    assert 0 in ids and 49406 in ids and 49407 in ids and len(ids) < 200  # pad, start and end of text kept
    captions = [t.caption("taxon_com") for t in TAXA] + ["a bad origami of an unseen genus."]  # ids outside, too
    before = clip.encode_texts(captions)
    full = clip.model.token_embedding.weight.detach().clone()
    compact_text_vocabulary(clip.model, ids)
    emb = clip.model.token_embedding
    assert isinstance(emb, CompactEmbedding) and emb.weight.shape == (len(ids), full.shape[1])
    assert torch.equal(clip.encode_texts(captions), before)
    assert torch.equal(clip.model.state_dict()["token_embedding.weight"], full)  # saved as the full matrix

    # trained compact: the export is plain open_clip with the stock tokenizer, identical embeddings
    run = tmp_path / "compact"
    train(make_config(data=str(dataset), out=str(run), steps=6, save_every=3, compact_vocab=True,
                      text_type="mixed-sample", **FAST))
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{run / 'model'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{run / 'model'}")
    model.eval()
    with torch.no_grad():
        plain = model.encode_text(tokenizer(captions), normalize=True)
    assert torch.allclose(plain, load_model(str(run / "model")).encode_texts(captions), atol=1e-6)
    trained = _weights(run / "model")["token_embedding.weight"]
    init = create_model("micro-vit-32", seed=0).model.token_embedding.weight.detach()
    outside = torch.ones(len(init), dtype=torch.bool)
    outside[ids] = False
    assert torch.equal(trained[outside], init[outside])  # rows no caption uses: as initialised
    assert not torch.equal(trained[ids], init[ids])       # the rows the captions use: trained


def test_captions_encoded_in_length_groups_equal_open_clip():
    from treeclip.model import create_model
    from treeclip.model.factory import encode_tokens, length_groups

    clip = create_model("micro-vit-32", seed=1)
    captions = [t.caption(tt) for t in TAXA for tt in ("com", "taxon_com", "sci", "taxon")]
    tokens = clip.tokenizer(captions)
    lengths = (tokens.argmax(dim=-1) + 1).tolist()
    cuts = length_groups(lengths)
    assert 1 < len(cuts) <= 3 and cuts[-1] == max(lengths) and cuts == sorted(cuts)
    assert length_groups([9] * 10) == [9]
    with torch.no_grad():
        grouped, plain = encode_tokens(clip.model, tokens), clip.model.encode_text(tokens)
    assert torch.allclose(grouped, plain, atol=1e-5)  # every caption back in its own row


def test_cached_images_are_the_streamed_pixels(dataset, tmp_path):
    from treeclip.model import create_model
    from treeclip.train.data import ShardIndex, ShardSamples, split_shards

    clip = create_model("micro-vit-32")
    index = ShardIndex.build(split_shards(dataset, "train"))
    streamed = ShardSamples(index, clip.preprocess, draft_size=clip.image_size)
    cached = ShardSamples(index, clip.preprocess, draft_size=clip.image_size, cache_images=True)
    assert cached.cache is not None
    for i in (0, 7, len(index) - 1):
        a, b = streamed.load(i, "taxon"), cached.load(i, "sci_com")
        assert torch.equal(a[0], b[0]) and a[2:] == b[2:]
    # the same run, streamed and cached: bit-identical weights
    runs = {}
    for name, cache in (("streamed", False), ("cached", True)):
        train(make_config(data=str(dataset), out=str(tmp_path / name), steps=2, save_every=0, cache_images=cache,
                          **FAST))
        runs[name] = _weights(tmp_path / name / "model")
    assert all(torch.equal(runs["streamed"][k], runs["cached"][k]) for k in runs["streamed"])


def test_cached_images_replace_an_unreadable_sample_like_streaming(tmp_path, caplog):
    from treeclip.model import create_model
    from treeclip.train.data import ShardIndex, ShardSamples, split_shards

    data = make_dataset(tmp_path / "ds", per_class=3, val_per_class=0)
    index = ShardIndex.build(split_shards(data, "train"))
    shard = Path(index.shards[int(index.shard[4])])
    blob = bytearray(shard.read_bytes())
    start = int(index.start[4]) + 512  # the data block of sample 4's first member (its JPEG)
    blob[start:start + 64] = b"\0" * 64
    shard.write_bytes(bytes(blob))
    clip = create_model("micro-vit-32")
    streamed = ShardSamples(index, clip.preprocess, draft_size=clip.image_size)
    cached = ShardSamples(index, clip.preprocess, draft_size=clip.image_size, cache_images=True)
    assert caplog.text.count("sample 4") == 1  # reported once, when caching
    a, b = streamed.load(4, "com"), cached.load(4, "com")
    assert a[4] == b[4] == 1 and a[3] == b[3] and torch.equal(a[0], b[0])  # both: sample 5 instead, one failure


def test_resampled_plan_draws_shards_with_replacement():
    import numpy as np

    shard_of = np.repeat(np.arange(5), [30, 25, 40, 10, 20])
    plan = Plan(125, 20, seed=3, text_type="mixed", shard_of=shard_of)
    drawn = [i for step in range(60) for i, _, _ in plan.micro_batches(step)[0]]
    counts = np.bincount(drawn, minlength=125)
    assert counts.min() != counts.max()  # with replacement: some samples come more often than others
    by_shard = np.bincount(shard_of[drawn], minlength=5)
    assert (by_shard > 0).all()
    again = Plan(125, 20, seed=3, text_type="mixed", shard_of=shard_of)
    assert again.micro_batches(47) == plan.micro_batches(47)  # a pure function of the step (resume)
    ranks = [Plan(125, 20, seed=3, world_size=2, rank=r, shard_of=shard_of).micro_batches(47)[0] for r in range(2)]
    assert ranks[0] + ranks[1] == plan.micro_batches(47)[0]  # any number of processes: the same global batch
    assert Plan(125, 20, seed=4, shard_of=shard_of).micro_batches(0) != plan.micro_batches(0)
    plain = Plan(125, 20, seed=3, text_type="mixed")
    epoch = [i for s in range(6) for i, _, _ in plain.micro_batches(s)[0]]
    assert len(set(epoch)) == len(epoch) == 120  # without: an epoch never repeats a sample


def test_resampled_compact_cached_run_resumes_exactly(dataset, tmp_path):
    import shutil

    full = tmp_path / "full"
    cfg = make_config(data=str(dataset), out=str(full), steps=8, save_every=4, keep_checkpoints=5,
                      text_type="mixed", dataset_resampled=True, compact_vocab=True, cache_images=True, **FAST)
    train(cfg)
    part = tmp_path / "part"
    shutil.copytree(full / "checkpoints" / "step-00000004", part / "checkpoints" / "step-00000004")
    train(make_config(**{**cfg.as_dict(), "out": str(part)}), resume="latest")
    a, b = _weights(full / "model"), _weights(part / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_settings_fail_with_one_line(dataset, tmp_path):
    with pytest.raises(TreeclipError, match="exactly one of steps or epochs"):
        make_config(data=str(dataset), out=str(tmp_path), **FAST)
    with pytest.raises(TreeclipError, match="unknown preset"):
        make_config(preset="nope", steps=1)
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = 1e-3\nlearning_rate = 3\n")
    with pytest.raises(TreeclipError, match="unknown setting"):
        make_config(config_file=str(bad), steps=1)
    cfg = make_config(preset="cpu-demo", data="x", out="y")
    assert cfg.model == "tiny-vit-64" and cfg.steps == 600
    bio = make_config(preset="bioclip", data="x", out="y", steps=10)
    assert bio.batch_size == 32768 and bio.lr == 1e-4 and bio.epochs is None and bio.betas == (0.9, 0.98)
    with pytest.raises(TreeclipError, match="larger than"):
        train(make_config(data=str(dataset), out=str(tmp_path / "r"), steps=1, **{**FAST, "batch_size": 4096}))
