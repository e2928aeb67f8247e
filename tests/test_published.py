"""The published BioCLIP models and tree-of-life label sets, offline.

A fake Hugging Face cache holds tiny models under the published repo names and file names
(`models--imageomics--bioclip`, `models--imageomics--bioclip-2`: `refs/main`, snapshots
linking into blobs, open_clip's `open_clip_config.json` as `push_to_hf_hub` writes it) and
tiny label sets in the published layout (`datasets--imageomics--TreeOfLife-10M` and
`-200M`: `embeddings/txt_emb_species.npy` of shape (dim, n) + `.json`). Tree-of-life
predictions over them are checked against a plain numpy computation.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from predict_helpers import TAXA
from treeclip.cli import cli
from treeclip.errors import TreeclipError
from treeclip.model import load_model
from treeclip.model.factory import ClipModel, build_clip
from treeclip.model.registry import get_config
from treeclip.runtime.options import InferenceOptions
from huggingface_hub import constants as hf_constants
from treeclip.taxonomy.taxon import RANKS

BIOCLIP, BIOCLIP2 = "hf-hub:imageomics/bioclip", "hf-hub:imageomics/bioclip-2"
OPTS = dict(options=InferenceOptions(workers=0, batch_size=3, precision="fp32"), progress=False)


# -- the fake cache --------------------------------------------------------------------------
def _put(repo: Path, files: dict[str, bytes], rev: str) -> Path:
    """Files of one revision as the hub cache holds them: blobs named by hash, snapshot links."""
    snap = repo / "snapshots" / rev
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return snap


def _model_files(clip: ClipModel, tmp: Path, safetensors: bool) -> dict[str, bytes]:
    """What open_clip's push_to_hf_hub uploads: the config (model_cfg + mean/std) and weights."""
    from safetensors.torch import save_file

    pp = clip.config["preprocess_cfg"]
    config = {"model_cfg": clip.config["model_cfg"], "preprocess_cfg": {"mean": pp["mean"], "std": pp["std"]}}
    files = {"open_clip_config.json": json.dumps(config, indent=2).encode(), "README.md": b"# model card\n"}
    state = {k: v.contiguous() for k, v in clip.model.state_dict().items()}
    torch.save(state, tmp / "w.bin")
    files["open_clip_pytorch_model.bin"] = (tmp / "w.bin").read_bytes()
    if safetensors:
        save_file(state, str(tmp / "w.safetensors"))
        files["open_clip_model.safetensors"] = (tmp / "w.safetensors").read_bytes()
    return files


def _micro(quick_gelu: bool, embed_dim: int, seed: int) -> ClipModel:
    config = get_config("micro-vit-32")
    config.pop("description")
    config["model_cfg"].update(quick_gelu=quick_gelu, embed_dim=embed_dim)
    torch.manual_seed(seed)
    clip = ClipModel(model=build_clip(config), name="fake", config=config)
    with torch.no_grad():
        clip.model.logit_scale.fill_(np.log(30.0))  # a trained-like temperature, not 1/0.07
    clip.model.eval()
    return clip


def label_entries(n_random: int, seed: int) -> list:
    """Published-style names: the test taxa plus random ones, shuffled, some without common names."""
    rng = random.Random(seed)
    entries = [[list(t.lineage), t.common] for t in TAXA]
    for i in range(n_random):
        ranks = [f"Kingdom{rng.randrange(2)}", f"Phylum{rng.randrange(3)}", f"Class{rng.randrange(4)}",
                 f"Order{rng.randrange(5)}", f"Family{rng.randrange(8)}", f"Genus{rng.randrange(20)}", f"sp{i}"]
        if rng.random() < 0.1:
            ranks[4] = ""  # a gap in the lineage
        entries.append([ranks, f"common {i}" if rng.random() < 0.7 else ""])
    rng.shuffle(entries)
    return entries


def _label_files(entries: list, dim: int, dtype, seed: int, tmp: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    array = rng.standard_normal((dim, len(entries))).astype(np.float32)
    array /= np.linalg.norm(array, axis=0, keepdims=True)
    np.save(tmp / "emb.npy", array.astype(dtype))
    return {"embeddings/txt_emb_species.npy": (tmp / "emb.npy").read_bytes(),
            "embeddings/txt_emb_species.json": json.dumps(entries).encode(), "README.md": b"# dataset card\n"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The fake cache: bioclip (QuickGELU, 64-d, safetensors + bin), bioclip-2 (GELU, 96-d,
    bin only) and their label sets (64-d float16 and 96-d float32)."""
    root = tmp_path_factory.mktemp("hub")
    tmp = tmp_path_factory.mktemp("staging")
    models = {"bioclip": _micro(True, 64, 0), "bioclip-2": _micro(False, 96, 1)}
    _put(root / "models--imageomics--bioclip", _model_files(models["bioclip"], tmp, True), "a" * 40)
    _put(root / "models--imageomics--bioclip-2", _model_files(models["bioclip-2"], tmp, False), "b" * 40)
    sets = {"10M": label_entries(150, 0), "200M": label_entries(400, 1)}
    _put(root / "datasets--imageomics--TreeOfLife-10M", _label_files(sets["10M"], 64, np.float16, 2, tmp), "c" * 40)
    _put(root / "datasets--imageomics--TreeOfLife-200M", _label_files(sets["200M"], 96, np.float32, 3, tmp), "d" * 40)
    return root, models, sets


@pytest.fixture
def offline(hub, monkeypatch):
    """The fake cache as Hugging Face's own (its HF_HUB_CACHE), and no network at all."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub[0]))
    monkeypatch.delenv("TREECLIP_HF_HUB", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return hub


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(5):
        p = folder / f"p{i}.png"
        Image.new("RGB", (30 + 3 * i, 36), ((71 * i) % 256, (29 * i + 80) % 256, (113 * i + 40) % 256)).save(p)
        paths.append(p)
    return paths


# -- the reference: plain numpy over the published files ----------------------------------------
def label_dir(hub_root: Path, dataset: str) -> Path:
    return next((hub_root / f"datasets--imageomics--{dataset}" / "snapshots").iterdir()) / "embeddings"


def reference(clip, photos, hub_root: Path, dataset: str | None, rank: str, k: int, keep=None) -> list[list[tuple]]:
    """Per photo, the top k (names down to `rank`, score) of
    softmax(logit_scale * normalize(image) @ array), summed per lineage down to `rank`,
    over the pair in a published dataset repo (or in the folder `hub_root` when no `dataset`)."""
    from treeclip.data.images import decode_image

    base = label_dir(hub_root, dataset) if dataset else hub_root
    array = np.load(base / "txt_emb_species.npy").astype(np.float64)
    entries = json.loads((base / "txt_emb_species.json").read_text())
    cols = [i for i, e in enumerate(entries) if keep is None or keep(e)]
    pixels = torch.stack([clip.preprocess(decode_image(p, draft_size=clip.image_size)) for p in photos])
    feats = clip.encode_images(pixels).numpy().astype(np.float64)
    logits = clip.logit_scale() * feats @ array[:, cols]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    depth = RANKS.index(rank) + 1
    out = []
    for row in probs:
        sums: dict[tuple, float] = collections.defaultdict(float)
        for p, i in zip(row, cols):
            names, common = entries[i]
            sums[tuple(names[:depth]) + ((common,) if rank == "species" else ())] += p
        out.append(sorted(sums.items(), key=lambda kv: -kv[1])[:k])
    return out


def as_reference(rows: list[dict], rank: str) -> list[list[tuple]]:
    by_file = collections.defaultdict(list)
    depth = RANKS.index(rank) + 1
    for r in rows:
        names = [r[c] for c in RANKS[:min(depth, 6)]]
        if rank == "species":
            names += [r["species_epithet"], r["common_name"]]
        by_file[r["file_name"]].append((tuple(names), r["score"]))
    return list(by_file.values())


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [n for n, _ in g] == [n for n, _ in w]
        assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=2e-5)


# -- models ------------------------------------------------------------------------------
def test_hub_specs_load_offline_with_their_own_architecture(offline):
    root, models, _ = offline
    clip = load_model(BIOCLIP)
    assert clip.name == BIOCLIP and clip.embed_dim == 64
    assert clip.fingerprint() == models["bioclip"].fingerprint()
    assert type(clip.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    clip2 = load_model(BIOCLIP2)  # only open_clip_pytorch_model.bin: read with weights_only=True
    assert clip2.fingerprint() == models["bioclip-2"].fingerprint()
    assert isinstance(clip2.model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert clip2.image_size == 32 and clip2.config["preprocess_cfg"]["size"] == 32  # filled in: no size given


def test_hub_roots_in_order_and_local_dir_copies(hub, monkeypatch, tmp_path):
    import shutil

    root, models, _ = hub
    monkeypatch.delenv("TREECLIP_HF_HUB", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(root))  # Hugging Face's own cache
    assert load_model(BIOCLIP).fingerprint() == models["bioclip"].fingerprint()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "nowhere"))
    assert load_model(BIOCLIP2, hub_dir=root).fingerprint() == models["bioclip-2"].fingerprint()  # --hub-dir
    monkeypatch.setenv("TREECLIP_HF_HUB", str(root))  # the library's default: treeclip's own pointer
    assert load_model(BIOCLIP2).fingerprint() == models["bioclip-2"].fingerprint()
    # a --local-dir download is a plain folder with the same files: a model dir
    snap = next((root / "models--imageomics--bioclip" / "snapshots").iterdir())
    shutil.copytree(snap, tmp_path / "local", symlinks=False)
    assert load_model(str(tmp_path / "local")).fingerprint() == models["bioclip"].fingerprint()
    with pytest.raises(TreeclipError, match="not a Hugging Face repo id"):
        load_model("hf-hub:../../etc")


def test_missing_files_are_one_line_naming_every_place_and_exit_2(hub, tmp_path, monkeypatch, photos):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TREECLIP_HF_HUB", str(tmp_path / "copied-hub"))
    result = CliRunner().invoke(cli, ["predict", BIOCLIP2, str(photos[0]), "-q"])
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "hf-hub:imageomics/bioclip-2" in lines[0] and "not found offline" in lines[0]
    assert str(tmp_path / "copied-hub" / "models--imageomics--bioclip-2") in lines[0]
    assert str(tmp_path / "empty-cache" / "models--imageomics--bioclip-2") in lines[0]

    # the model is there but a weights blob went missing, and the label set is absent
    import shutil

    shutil.copytree(hub[0] / "models--imageomics--bioclip-2", tmp_path / "copied-hub" / "models--imageomics--bioclip-2",
                    symlinks=True)
    for blob in (tmp_path / "copied-hub" / "models--imageomics--bioclip-2" / "blobs").iterdir():
        if blob.stat().st_size > 100_000:
            blob.unlink()
    result = CliRunner().invoke(cli, ["predict", BIOCLIP2, str(photos[0]), "-q"])
    assert result.exit_code == 2 and "open_clip_pytorch_model.bin" in result.stderr
    shutil.rmtree(tmp_path / "copied-hub" / "models--imageomics--bioclip-2")
    shutil.copytree(hub[0] / "models--imageomics--bioclip-2", tmp_path / "copied-hub" / "models--imageomics--bioclip-2",
                    symlinks=False)
    result = CliRunner().invoke(cli, ["predict", BIOCLIP2, str(photos[0]), "-q"])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1
    assert "hf-hub:imageomics/TreeOfLife-200M" in lines[0] and "published for hf-hub:imageomics/bioclip-2" in lines[0]
    assert str(tmp_path / "copied-hub" / "datasets--imageomics--TreeOfLife-200M") in lines[0]


def test_models_published_lists_what_is_here(offline, tmp_path):
    result = CliRunner().invoke(cli, ["models", "--published", "--json"])
    assert result.exit_code == 0, result.output
    rows = {json.loads(ln)["spec"]: json.loads(ln) for ln in result.stdout.splitlines()}
    assert set(rows) == {BIOCLIP, BIOCLIP2, "hf-hub:imageomics/TreeOfLife-10M", "hf-hub:imageomics/TreeOfLife-200M"}
    assert all(r["found"] for r in rows.values())
    assert rows["hf-hub:imageomics/TreeOfLife-200M"]["where"].endswith("embeddings")


def test_a_label_set_named_for_the_model_is_read_before_the_species_set(offline, tmp_path, monkeypatch):
    """pybioclip's per-model naming: `txt_emb_<model>.*` beside `txt_emb_species.*` in a
    dataset repo or a folder; each model reads its own set when there is one."""
    import shutil

    from treeclip.predict import TreeOfLifeClassifier

    root, _, sets = offline
    hub = tmp_path / "hub"
    shutil.copytree(root, hub, symlinks=True)
    snapshot = hub / "datasets--imageomics--TreeOfLife-200M" / "snapshots" / ("d" * 40) / "embeddings"
    own = label_entries(30, 7)
    files = _label_files(own, 96, np.float32, 8, tmp_path)
    (snapshot / "txt_emb_bioclip-2.npy").write_bytes(files["embeddings/txt_emb_species.npy"])
    (snapshot / "txt_emb_bioclip-2.json").write_bytes(files["embeddings/txt_emb_species.json"])
    monkeypatch.setenv("TREECLIP_HF_HUB", str(hub))
    assert len(TreeOfLifeClassifier(BIOCLIP2, **OPTS).label_set) == len(own)  # its own set
    # a folder given with --taxa: the same choice; another model reads the species set
    assert len(TreeOfLifeClassifier(BIOCLIP2, taxa=str(snapshot), **OPTS).label_set) == len(own)
    other = TreeOfLifeClassifier(BIOCLIP2, taxa=str(snapshot / "txt_emb_species.json"), **OPTS)
    assert len(other.label_set) == len(sets["200M"])
    result = CliRunner().invoke(cli, ["models", "--published", "--json"])
    rows = {json.loads(ln)["spec"]: json.loads(ln) for ln in result.stdout.splitlines()}
    listed = [r for r in rows.values() if r["kind"] == "label set" and r["for"] == BIOCLIP2]
    assert listed and listed[0]["sets"] == ["bioclip-2", "species"] and listed[0]["reads"] == "bioclip-2"


# -- tree-of-life predictions over the published label sets ---------------------------------------
@pytest.mark.parametrize("path", ["dense", "blocked"])
@pytest.mark.parametrize("model,dataset", [(BIOCLIP, "TreeOfLife-10M"), (BIOCLIP2, "TreeOfLife-200M")])
def test_published_label_set_is_picked_and_equals_the_numpy_reference(offline, photos, monkeypatch, path,
                                                                        model, dataset):
    from treeclip.predict import TreeOfLifeClassifier, classifiers
    from treeclip.runtime import labelsets

    if path == "blocked":  # score from the memory-mapped file, a few rows of the matrix at a time
        monkeypatch.setattr(classifiers, "DENSE_BYTES", 0)
        monkeypatch.setattr(labelsets, "BLOCK_BYTES", 5 * 500 * 4)
    clf = TreeOfLifeClassifier(model, **OPTS)
    assert (clf._matrix is not None) == (path == "blocked")
    assert isinstance(clf.label_set.embeddings, np.memmap)
    for rank, k in (("species", 5), ("genus", 4), ("family", 3), ("kingdom", 2)):
        got = as_reference(clf.predict(photos, rank=rank, k=k), rank)
        assert_same(got, reference(clf.clip, photos, offline[0], dataset, rank, k))


def test_subsets_rollup_and_ncbi_filter_on_a_published_set(offline, photos, tmp_path):
    from treeclip.predict import TreeOfLifeClassifier

    insects = TreeOfLifeClassifier(BIOCLIP2, subset="class=Insecta", **OPTS)
    assert len(insects.columns) == 3
    want = reference(insects.clip, photos, offline[0], "TreeOfLife-200M", "species", 3,
                     keep=lambda e: e[0][2] == "Insecta")
    assert_same(as_reference(insects.predict(photos, k=3), "species"), want)

    (tmp_path / "regional.txt").write_text("Pica hudsonia\nFamily3\ncommon 7\n")
    regional = TreeOfLifeClassifier(BIOCLIP2, subset=[str(tmp_path / "regional.txt"), "kingdom=Kingdom1,Animalia"],
                                    **OPTS)
    names = json.loads((label_dir(offline[0], "TreeOfLife-200M") / "txt_emb_species.json").read_text())
    kept = lambda e: (e[0][5:7] == ["Pica", "hudsonia"] or e[0][4] == "Family3" or e[1] == "common 7") and \
        e[0][0] in ("Kingdom1", "Animalia")  # noqa: E731
    assert len(regional.columns) == sum(map(kept, names)) > 1
    assert_same(as_reference(regional.predict(photos, rank="order", k=2), "order"),
                reference(regional.clip, photos, offline[0], "TreeOfLife-200M", "order", 2, keep=kept))

    rolled = TreeOfLifeClassifier(BIOCLIP2, **OPTS).predict(photos, rollup=0.3)
    best = {r: [top[0][1] for top in reference(insects.clip, photos, offline[0], "TreeOfLife-200M", r, 1)]
            for r in RANKS}
    for j, row in enumerate(rolled):
        confident = [r for r in reversed(RANKS) if best[r][j] >= 0.3]
        rank = confident[0] if confident else "unknown"
        assert row["rank"] == rank
        assert row["score"] == pytest.approx(best[rank if confident else "kingdom"][j], abs=2e-5)
    assert {row["rank"] for row in rolled} - {"unknown"}  # some photo is answered at some rank

    corvids = TreeOfLifeClassifier(BIOCLIP2, subset="ncbi:Corvidae", **OPTS)
    assert {t.family for t in corvids.taxa} == {"Corvidae"}
    assert {"Corvus corax", "Pica pica"} <= {t.scientific_name for t in corvids.taxa}


def test_explicit_label_sets_columns_cache_and_mismatches(offline, photos, tmp_path, monkeypatch):
    from treeclip.predict import TreeOfLifeClassifier
    from treeclip.runtime import labelsets

    snap = label_dir(offline[0], "TreeOfLife-200M").parent
    want = as_reference(TreeOfLifeClassifier(BIOCLIP2, **OPTS).predict(photos, rank="family", k=3), "family")
    with monkeypatch.context() as m:  # read once, then from the labels cache
        m.setattr(labelsets, "read_names", lambda path: pytest.fail("the columns were not cached"))
        for taxa in (str(snap), str(snap / "embeddings"), str(snap / "embeddings" / "txt_emb_species.npy"),
                     "hf-hub:imageomics/TreeOfLife-200M"):
            clf = TreeOfLifeClassifier(BIOCLIP2, taxa=taxa, **OPTS)
            assert_same(as_reference(clf.predict(photos, rank="family", k=3), "family"), want)
    with pytest.raises(TreeclipError, match="96-d, but hf-hub:imageomics/bioclip makes 64-d"):
        TreeOfLifeClassifier(BIOCLIP, taxa=str(snap), **OPTS)
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "txt_emb_species.npy", np.zeros((96, 3), np.float32))
    (bad / "txt_emb_species.json").write_text(json.dumps(label_entries(0, 0)[:4]))
    with pytest.raises(TreeclipError, match="4 taxa, but .* has 3 columns"):
        TreeOfLifeClassifier(BIOCLIP2, taxa=str(bad), **OPTS)
    (bad / "txt_emb_species.json").write_text('[[["Animalia"], "x"]]')
    with pytest.raises(TreeclipError, match="entry 0 is not"):
        TreeOfLifeClassifier(BIOCLIP2, taxa=str(bad / "txt_emb_species.json"), **OPTS)


def test_cli_predicts_with_the_published_set(offline, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "nowhere"))
    monkeypatch.setenv("TREECLIP_HF_HUB", "")  # restored afterwards; only --hub-dir names the hub
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["predict", BIOCLIP2, *map(str, photos), "--hub-dir", str(offline[0]),
                                      "--rank", "genus", "--k", "2", "--format", "jsonl", "-o", str(out),
                                      "--precision", "fp32", "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(rows) == 2 * len(photos) and set(rows[0]) == {"file_name", *RANKS[:6], "score"}


# -- the same layout written by treeclip ---------------------------------------------------------
def _cli_rows(args: list[str], out: Path) -> tuple[list[dict], str]:
    result = CliRunner().invoke(cli, ["predict", *args, "--format", "jsonl", "-o", str(out), "--overwrite",
                                      "--precision", "fp32", "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    return [json.loads(ln) for ln in out.read_text().splitlines()], result.stderr


def test_train_then_predict_with_no_taxa(tmp_path, photos):
    import pyarrow.parquet as pq

    from train_helpers import TAXA as TRAINED_TAXA
    from train_helpers import make_dataset
    from treeclip.model import create_model, save_model
    from treeclip.train import make_config, train

    data = make_dataset(tmp_path / "ds", per_class=4, val_per_class=1)
    run = tmp_path / "run"
    train(make_config(data=str(data), out=str(run), model="micro-vit-32", steps=3, batch_size=16, workers=0,
                      threads=1, progress=False, save_every=0, val_every=0, val_samples=8))
    model_dir = run / "model"  # train wrote the label set into model/ and best/
    assert (run / "best" / "txt_emb_species.npy").is_file()

    assert pq.read_table(model_dir / "taxa.parquet").equals(pq.read_table(data / "taxa.parquet"))
    array = np.load(model_dir / "txt_emb_species.npy")
    names = json.loads((model_dir / "txt_emb_species.json").read_text())
    assert array.shape == (64, len(TRAINED_TAXA)) and array.dtype == np.float32
    assert sorted(tuple(n[0]) + (n[1],) for n in names) == sorted(t.lineage + (t.common,) for t in TRAINED_TAXA)

    from treeclip.predict.labels import load_label_source

    assert load_label_source(None, str(model_dir)).embeddings is not None  # the pair, not taxa.parquet
    own, err = _cli_rows([str(model_dir), *map(str, photos), "--rank", "genus", "--k", "3"], tmp_path / "own.jsonl")
    assert "encoding" not in err
    encoded, _ = _cli_rows([str(model_dir), *map(str, photos), "--rank", "genus", "--k", "3", "--taxa", str(data)],
                           tmp_path / "encoded.jsonl")
    assert_same(as_reference(own, "genus"), as_reference(encoded, "genus"))
    assert_same(as_reference(own, "genus"), reference(load_model(str(model_dir)), photos, model_dir, None, "genus", 3))

    # weights saved again without new labels: the stale pair is noticed, taxa.parquet is encoded
    save_model(create_model("micro-vit-32", seed=5), model_dir)
    stale, err = _cli_rows([str(model_dir), *map(str, photos), "--k", "2"], tmp_path / "stale.jsonl")
    assert "made by another model" in err
    fresh, _ = _cli_rows([str(model_dir), *map(str, photos), "--k", "2", "--taxa", str(data)], tmp_path / "fresh.jsonl")
    assert_same(as_reference(stale, "species"), as_reference(fresh, "species"))
