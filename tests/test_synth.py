"""The synthetic tree of life: real NCBI names, lineage-driven images, honest splits."""

from __future__ import annotations

import csv
import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from treeclip.data.synth import generate, render
from treeclip.data.dataset import read_catalog, read_manifest, read_taxa, shard_paths
from treeclip.data.synth import SynthConfig, load_species, look_of, render_batch, synthesize
from treeclip.data.synth_names import EPITHET_MEANINGS, MEANINGS, read_table
from treeclip.errors import TreeclipError
from treeclip.taxonomy.taxon import RANKS, TEXT_TYPES, Taxon

SMALL = SynthConfig(species=60, images_per_species=6, eval_images_per_species=3, image_size=32,
                    val_fraction=0.2, seed=1, workers=1)


@pytest.fixture(scope="module")
def reference():
    from treeclip.taxonomy.ncbi import default_reference

    return default_reference()


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "a"
    synthesize(path, SMALL)
    return path


def _task_rows(out: Path, name: str) -> list[dict]:
    with open(out / "tasks" / name / "catalog.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _task_taxa(out: Path, name: str) -> set[Taxon]:
    return {Taxon(tuple(r[k] for k in RANKS), r["common"]) for r in _task_rows(out, name)}


def _shard_samples(out: Path, split: str):
    """(key -> {member extension: bytes}) of every shard of a split."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in shard_paths(out, split):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


# -- the shipped names -------------------------------------------------------------------
def test_every_shipped_species_is_what_ncbi_gives(reference):
    rows = read_table()
    assert len(rows) >= 200
    for taxid, taxon, meaning in rows:
        assert reference.taxon_of(taxid) == taxon, taxon  # lineage and common name
        found = reference.lookup_one(taxon.scientific_name, context=taxon)
        assert found.status == "resolved" and found.match.tax_id == taxid, taxon
        assert EPITHET_MEANINGS[taxon.species] == meaning


def test_names_share_structure():
    taxa = [t for _, t, _ in read_table()]
    assert {"Animalia", "Plantae", "Fungi"} <= {t.kingdom for t in taxa}
    genera_of_epithet: dict[str, set[str]] = {}
    genera_of_family: dict[str, set[str]] = {}
    for t in taxa:
        genera_of_epithet.setdefault(t.species, set()).add(t.genus)
        genera_of_family.setdefault(t.family, set()).add(t.genus)
    assert max(len(g) for g in genera_of_epithet.values()) >= 10  # e.g. alba in many genera
    assert sum(len(g) >= 2 for g in genera_of_epithet.values()) >= 30
    assert sum(len(g) >= 2 for g in genera_of_family.values()) >= 10  # room for unseen genera


# -- the pictures ------------------------------------------------------------------------
def test_relatives_look_closer_than_strangers():
    """Under the same pose and lighting, images of close relatives differ less."""
    species = load_species()[::3]
    imgs = {sp.taxon: render_batch(look_of(sp.taxon, sp.meaning), 4, 32, np.random.default_rng(5)).astype(np.float32)
            for sp in species}
    by_rank: dict[str, list[float]] = {}
    for a, b in itertools.combinations(imgs, 2):
        rank = a.lowest_common_rank(b) or "none"
        by_rank.setdefault(rank, []).append(float(np.abs(imgs[a] - imgs[b]).mean()))
    mean = {r: np.mean(v) for r, v in by_rank.items()}
    assert mean["genus"] < mean["family"] < mean["order"] < mean["none"]
    assert mean["genus"] < 0.5 * mean["none"]


def test_marking_follows_the_epithet_meaning():
    """Same lineage above the species, same nuisance: a `rubra` marking is red, a
    `caerulea` one blue, a `striata` one striped."""
    base = load_species()[0]
    looks = {m: look_of(base.taxon, m) for m in ("red", "blue", "striped")}
    imgs = {m: render_batch(look, 8, 48, np.random.default_rng(3)).astype(np.int32) for m, look in looks.items()}
    diff = np.abs(imgs["red"] - imgs["blue"]).sum(-1) > 60  # where the two markings differ
    assert diff.mean() > 0.01
    red, blue = imgs["red"][diff], imgs["blue"][diff]
    assert red[:, 0].mean() > red[:, 2].mean() + 60 and blue[:, 2].mean() > blue[:, 0].mean() + 60
    assert not np.array_equal(imgs["striped"], imgs["red"])


def test_mean_colour_does_not_give_the_species():
    """Nuisance (lighting, colour cast, clutter, pose) keeps a nearest-centroid classifier
    on mean RGB far from solving it (it sits around 6-10% among 64 species here)."""
    species = load_species()[::6]
    imgs = np.stack([render_batch(look_of(sp.taxon, sp.meaning), 12, 24, np.random.default_rng(i))
                     for i, sp in enumerate(species)]).astype(np.float32)
    feats = imgs.mean(axis=(2, 3))  # (species, image, rgb)
    centroids = feats[:, :8].mean(axis=1)
    dist = ((feats[:, 8:, None, :] - centroids[None, None]) ** 2).sum(-1)
    accuracy = (dist.argmin(-1) == np.arange(len(species))[:, None]).mean()
    assert accuracy < 0.2


@pytest.mark.parametrize("meaning", MEANINGS)
def test_every_epithet_meaning_is_drawn(meaning):
    taxon = load_species()[0].taxon
    img = render_batch(look_of(taxon, meaning), 1, 16, np.random.default_rng(0))
    assert img.shape == (1, 16, 16, 3) and img.dtype == np.uint8


def test_nuisance_varies_images_of_one_species():
    sp = load_species()[10]
    batch = render_batch(look_of(sp.taxon, sp.meaning), 6, 32, np.random.default_rng(0)).astype(np.float32)
    assert batch.shape == (6, 32, 32, 3)
    per_image_mean = batch.mean(axis=(1, 2, 3))
    assert per_image_mean.std() > 3  # lighting
    assert np.abs(batch[0] - batch[1]).mean() > 10  # pose, clutter, noise


# -- the generated dataset and tasks -----------------------------------------------------
def test_deterministic_and_independent_of_workers(out, tmp_path):
    other = tmp_path / "b"
    synthesize(other, SynthConfig(**{**SMALL.__dict__, "workers": 2}))
    files_a = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (out / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_rerun_with_same_options_is_skipped(out):
    again = synthesize(out, SMALL)
    assert again["skipped"] is True
    assert again["species"] == 60


def test_a_killed_rerun_is_not_mistaken_for_done(tmp_path, monkeypatch):
    out = tmp_path / "k"
    tiny = SynthConfig(species=20, images_per_species=2, eval_images_per_species=1, image_size=16)
    synthesize(out, tiny)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "_run_jobs", killed)
    with pytest.raises(KeyboardInterrupt):
        synthesize(out, SynthConfig(**{**tiny.__dict__, "seed": 5}))
    monkeypatch.undo()
    assert not (out / "synth.json").exists()
    assert synthesize(out, tiny).get("skipped") is None  # regenerated, not trusted


def test_large_images_render_in_bounded_batches(monkeypatch):
    """Batches are cut by pixel count, so big images never need one huge array."""
    sp = load_species()[3]
    look = look_of(sp.taxon, sp.meaning)
    sizes = []
    real = render.render_batch
    monkeypatch.setattr(render, "render_batch", lambda lk, n, size, rng: sizes.append(n) or real(lk, n, size, rng))
    monkeypatch.setattr(render, "_BATCH_PIXELS", 2 * 32 * 32)
    first = list(render.render_stream(look, 5, 32, np.random.default_rng(9)))
    again = list(render.render_stream(look, 5, 32, np.random.default_rng(9)))
    assert sizes == [2, 2, 1, 2, 2, 1]
    assert len(first) == 5 and all(a.shape == (32, 32, 3) for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_unseen_species_and_genera_are_absent_from_training(out):
    catalog = read_catalog(out).to_pydict()
    train_taxa = set(read_taxa(out))
    train_lineages = {tuple(catalog[r][i] for r in RANKS) for i in range(len(catalog["key"]))}
    assert {t.lineage for t in train_taxa} == train_lineages
    shard_taxa = set()
    for split in ("train", "val"):
        for members in _shard_samples(out, split).values():
            meta = json.loads(members["json"])
            shard_taxa.add(tuple(meta[r] for r in RANKS))
    assert shard_taxa == train_lineages

    unseen = _task_taxa(out, "synth-unseen")
    unseen_genus = _task_taxa(out, "synth-unseen-genus")
    seen = _task_taxa(out, "synth-seen")
    assert unseen and unseen_genus
    assert seen == train_taxa
    train_genera = {t.genus for t in train_taxa}
    train_families = {t.family for t in train_taxa}
    for t in unseen:
        assert t.lineage not in train_lineages
        assert t.genus in train_genera  # its genus was seen ...
        assert any(s.species == t.species and s.genus != t.genus for s in train_taxa)  # ... and its epithet
    for t in unseen_genus:
        assert t.genus not in train_genera and t.family in train_families
    summary = json.loads((out / "synth.json").read_text())
    assert summary["roles"] == {"seen": len(seen), "unseen": len(unseen), "unseen_genus": len(unseen_genus)}


def test_every_taxon_is_its_ncbi_lineage(out, reference):
    taxa = set(read_taxa(out))
    for name in ("synth-unseen", "synth-unseen-genus"):
        taxa |= _task_taxa(out, name)
    assert len({t.kingdom for t in taxa}) == 3
    for t in taxa:
        found = reference.lookup_one(t.scientific_name, context=t)
        assert found.status == "resolved" and found.match.taxon == t


def test_shards_hold_the_taxon_captions_and_counts(out):
    manifest = read_manifest(out)
    taxa = read_taxa(out)
    train, val = _shard_samples(out, "train"), _shard_samples(out, "val")
    n_seen = len(taxa)
    assert len(train) == n_seen * 5 and len(val) == n_seen * 1  # 6 images, 20% val
    assert manifest["splits"]["train"]["n_samples"] == len(train)
    for members in itertools.chain(train.values(), val.values()):
        meta = json.loads(members["json"])
        taxon = taxa[int(members["cls"])]
        assert tuple(meta[r] for r in RANKS) == taxon.lineage
        for t in TEXT_TYPES:
            assert members[f"{t}.txt"].decode("utf-8") == taxon.caption(t)
        from PIL import Image

        assert Image.open(io.BytesIO(members["jpg"])).size == (32, 32)


def test_task_folders_follow_the_task_spec(out):
    import tomllib

    for name in ("synth-seen", "synth-unseen", "synth-unseen-genus"):
        folder = out / "tasks" / name
        spec = tomllib.loads((folder / "task.toml").read_text())
        assert spec["name"] == name and spec["classes"]["rank"] == "species"
        with open(folder / spec["images"]["catalog"], newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and all((folder / spec["images"]["root"] / r["path"]).is_file() for r in rows)
        per_species = {}
        for r in rows:
            per_species[(r["genus"], r["species"])] = per_species.get((r["genus"], r["species"]), 0) + 1
        assert set(per_species.values()) == {SMALL.eval_images_per_species}
        from treeclip.evaluate.tasks import load_task  # the evaluation stage reads it as it is

        task = load_task(folder)
        assert len(task) == len(rows) and task.n_classes == len(per_species) and not task.problems


def test_bad_options_are_one_line_errors(tmp_path):
    from treeclip.cli import cli

    result = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "x"), "--image-size", "8"])
    assert result.exit_code == 2
    with pytest.raises(TreeclipError):
        synthesize(tmp_path / "y", SynthConfig(unseen_fraction=1.5))


def test_no_task_is_written_for_an_empty_role(tmp_path):
    summary = synthesize(tmp_path / "z", SynthConfig(species=20, images_per_species=1, eval_images_per_species=1,
                                                     image_size=16, unseen_fraction=0.0, unseen_genus_fraction=0.0))
    assert summary["roles"] == {"seen": 20, "unseen": 0, "unseen_genus": 0}
    assert summary["tasks"]["synth-unseen"]["path"] is None
    assert not (tmp_path / "z" / "tasks" / "synth-unseen").exists()
    assert (tmp_path / "z" / "tasks" / "synth-seen" / "task.toml").exists()


def test_cli_generates(tmp_path):
    from treeclip.cli import cli

    result = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "c"), "--species", "20",
                                      "--images-per-species", "2", "--eval-images-per-species", "1",
                                      "--image-size", "24", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "20 species" in result.output
    assert (tmp_path / "c" / "manifest.json").exists()
    assert (tmp_path / "c" / "tasks" / "synth-unseen-genus" / "task.toml").exists()
