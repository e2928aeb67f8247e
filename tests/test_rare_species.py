"""Rare Species selection rules: categories, absent from training, at least N images,
N sampled per species (seeded), and the written task runs through the task loader."""

import csv

import pytest
from click.testing import CliRunner

from treeclip.cli import cli
from treeclip.errors import TreeclipError
from treeclip.evaluate.rare_species import build_rare_species, normalise_category, select_rare_species
from treeclip.evaluate.tasks import load_task

LINEAGE = ["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae"]
RANK_COLS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]


def img_rows(genus, epithet, n, start=0):
    return [dict(zip(RANK_COLS, LINEAGE + [genus, epithet]), path=f"{genus}_{epithet}_{i}.jpg", common="")
            for i in range(start, start + n)]


STATUS = [
    {"scientific_name": "Corvus hawaiiensis", "category": "EW"},     # kept
    {"scientific_name": "Pica hudsonia", "category": "LC"},          # wrong category
    {"scientific_name": "Corvus corax", "category": "Vulnerable"},   # in training
    {"genus": "Cyanocorax", "species": "dickeyi", "category": "NT"},  # too few images
    {"scientific_name": "Garrulus lidthi Bonaparte, 1850", "category": "vu"},  # kept (author dropped)
    {"scientific_name": "Corvus unicolor", "category": "CR"},        # kept
    {"scientific_name": "Nucifraga extincta", "category": "EX"},     # extinct: not NT..EW
]
IMAGES = (img_rows("Corvus", "hawaiiensis", 5) + img_rows("Pica", "hudsonia", 9) + img_rows("Corvus", "corax", 9)
          + img_rows("Cyanocorax", "dickeyi", 3) + img_rows("Garrulus", "lidthi", 4)
          + img_rows("Corvus", "unicolor", 7) + img_rows("Nucifraga", "extincta", 9)
          + img_rows("Garrulus", "lidthi", 1))  # a repeated path counts once


def test_categories():
    assert normalise_category("Critically Endangered") == "CR"
    assert normalise_category(" en ") == "EN"
    assert normalise_category("Extinct in the Wild") == "EW"
    assert normalise_category("rare") == ""


def test_selection_rules():
    sel = select_rare_species(STATUS, IMAGES, {("corvus", "corax")}, min_images=4)
    kept = sorted((s["genus"], s["species"], s["category"]) for s in sel.species)
    assert kept == [("Corvus", "hawaiiensis", "EW"), ("Corvus", "unicolor", "CR"), ("Garrulus", "lidthi", "VU")]
    assert sel.counts["in_training"] == 1 and sel.counts["too_few_images"] == 1
    assert sel.counts["in_categories"] == 5  # EW, VU, NT, VU, CR
    per = {}
    for row in sel.images:
        per.setdefault(row["species"], []).append(row["path"])
    assert {k: len(v) for k, v in per.items()} == {"hawaiiensis": 4, "unicolor": 4, "lidthi": 4}
    assert all(len(set(v)) == len(v) for v in per.values())  # sampled without replacement
    # seeded: the same seed the same sample, another seed another one
    again = select_rare_species(STATUS, IMAGES, {("corvus", "corax")}, min_images=4)
    assert again.images == sel.images
    other = select_rare_species(STATUS, IMAGES, {("corvus", "corax")}, min_images=4, seed=5)
    assert other.images != sel.images


def test_per_species_and_max_species():
    sel = select_rare_species(STATUS, IMAGES, set(), min_images=3, per_species=2, max_species=2)
    assert len(sel.species) == 2 and len(sel.images) == 4
    assert sel.counts["eligible"] == 5  # corax (not in training now) and dickeyi (3 images) too
    with pytest.raises(TreeclipError, match="larger than the minimum"):
        select_rare_species(STATUS, IMAGES, set(), min_images=3, per_species=4)
    with pytest.raises(TreeclipError, match="unknown IUCN category"):
        select_rare_species(STATUS, IMAGES, set(), categories=["XX"])


def write_csv(path, rows, cols):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def test_build_writes_a_runnable_task(tmp_path):
    write_csv(tmp_path / "status.csv", [dict(r, genus=r.get("genus", ""), species=r.get("species", "")) for r in STATUS],
              ["scientific_name", "genus", "species", "category"])
    write_csv(tmp_path / "images.csv", IMAGES, ["path", *RANK_COLS, "common"])
    write_csv(tmp_path / "train.csv", [{"genus": "Corvus", "species": "Corvus corax"}], ["genus", "species"])
    res = CliRunner().invoke(cli, ["eval", "rare-species", "--status", str(tmp_path / "status.csv"),
                                   "--images", str(tmp_path / "images.csv"), "--training", str(tmp_path / "train.csv"),
                                   "--out", str(tmp_path / "rare"), "--min-images", "4"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = tmp_path / "rare"
    assert {p.name for p in out.iterdir()} == {"task.toml", "catalog.csv", "species.csv", "summary.json"}
    task = load_task(out)
    assert task.n_classes == 3 and len(task) == 12
    assert task.image_path(0).parent == tmp_path  # the root is the image catalog's folder
    with pytest.raises(TreeclipError, match="no species qualify"):
        build_rare_species(tmp_path / "status.csv", tmp_path / "images.csv", tmp_path / "train.csv",
                           tmp_path / "none", min_images=50)


def test_the_task_folder_is_an_exclude_set_for_the_data_builder(tmp_path):
    from treeclip.data import dedup

    write_csv(tmp_path / "status.csv", STATUS, ["scientific_name", "genus", "species", "category"])
    write_csv(tmp_path / "images.csv", IMAGES, ["path", *RANK_COLS, "common"])
    build_rare_species(tmp_path / "status.csv", tmp_path / "images.csv", None, tmp_path / "rare", min_images=4)
    paths = [p for _, p in dedup.exclusion_paths(str(tmp_path / "rare"))]
    task = load_task(tmp_path / "rare")
    assert sorted(map(str, paths)) == sorted(str(task.image_path(i)) for i in range(len(task)))
