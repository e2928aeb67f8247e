"""Deduplication: near duplicates of evaluation images (re-encoded, resized, slightly
cropped) are removed from a build; different images are kept; exact duplicates inside the
training set are removed; every removal is reported with its reason."""

from __future__ import annotations

import csv

import pyarrow.parquet as pq
import pytest
from PIL import Image

from _data_helpers import AMANITA, MORUS, PICA, encoded, save, scene
from treeclip.data.build import BuildOptions, build_dataset
from treeclip.data.dedup import DEFAULT_THRESHOLD, ExclusionIndex, build_exclusion_index, source_image_hashes
from treeclip.data.phash import hamming, phash


def _variants(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    return {
        "reencoded": Image.open(__import__("io").BytesIO(encoded(img, quality=40))).convert("RGB"),
        "resized": img.resize((w // 2, h // 2), Image.Resampling.BICUBIC),
        "cropped": img.crop((int(w * 0.04), int(h * 0.04), int(w * 0.96), int(h * 0.96))),
        "corner_cropped": img.crop((int(w * 0.07), int(h * 0.07), w, h)),
    }


def test_hash_separates_copies_from_other_images():
    a = scene(1)
    assert hamming(phash(a), phash(_variants(a)["reencoded"])) <= 8
    assert min(hamming(phash(a), phash(scene(s))) for s in range(10, 30)) > 3 * DEFAULT_THRESHOLD


def test_index_matches_near_duplicates_only(tmp_path):
    index = ExclusionIndex()
    for s in range(3):
        h = source_image_hashes(str(save(scene(s), tmp_path / f"eval{s}.png", "PNG")), size=64, variants=True)
        index.add(f"eval{s}", h["sha256"], h["phashes"])
    queries, expect = [], []
    for s in range(3):
        for name, v in _variants(scene(s)).items():
            queries.append(source_image_hashes(str(save(v, tmp_path / f"{s}-{name}.jpg")), size=64))
            expect.append(f"eval{s}")
    for s in range(40, 60):
        queries.append(source_image_hashes(str(save(scene(s), tmp_path / f"other{s}.jpg")), size=64))
        expect.append(None)
    exact = source_image_hashes(str(save(scene(2), tmp_path / "same.bmp", "BMP")), size=64)  # same pixels, other format
    queries.append(exact)
    expect.append("eval2")
    got = index.match_many([q["sha256"] for q in queries], [q["phash"] for q in queries])
    assert [m and m[1] for m in got] == expect
    assert got[-1][0] == "exact"
    # the threshold is what decides: just below a copy's distance, the copy is kept
    cropped = queries[2]
    d = got[2][2]
    assert d > 0
    h = source_image_hashes(str(tmp_path / "eval0.png"), size=64, variants=True)
    for threshold, expected in ((d, "eval0"), (d - 1, None)):
        index = ExclusionIndex(threshold=threshold)
        index.add("eval0", h["sha256"], h["phashes"])
        m = index.match(cropped["sha256"], cropped["phash"])
        assert (m and m[1]) == expected


def test_build_removes_evaluation_and_training_duplicates(tmp_path):
    # evaluation set as a task dir (task.toml + catalog.csv)
    task = tmp_path / "task"
    rows = ["path,kingdom,phylum,class,order,family,genus,species,common"]
    for s in range(3):
        save(scene(500 + s), task / "images" / f"e{s}.png", "PNG")
        rows.append(f"images/e{s}.png,Animalia,Chordata,Aves,Passeriformes,Corvidae,Pica,hudsonia,")
    (task / "catalog.csv").write_text("\n".join(rows) + "\n")
    (task / "task.toml").write_text('name = "t"\n[images]\ncatalog = "catalog.csv"\nroot = "."\n')
    # training folder: copies of the evaluation images, distinct images, and an exact twin
    train = tmp_path / "train"
    for s in range(3):
        for name, v in _variants(scene(500 + s)).items():
            if (s + len(name)) % 2 == 0 or name == "cropped":
                save(v, train / PICA / f"dup{s}-{name}.jpg")
    keep = [save(scene(600 + i), train / MORUS / f"k{i}.jpg") for i in range(6)]
    (train / AMANITA).mkdir()
    (train / AMANITA / "twin.jpg").write_bytes(keep[1].read_bytes())  # the same photo filed twice
    save(scene(600).transpose(Image.Transpose.FLIP_LEFT_RIGHT), train / AMANITA / "mirror.jpg")
    result = build_dataset([("folder", str(train))], tmp_path / "out",
                           BuildOptions(size=48, resolve=False, workers=1, val_fraction=0, chunk_size=4,
                                        exclude=[str(task)]), progress=False)
    cat = pq.read_table(tmp_path / "out" / "catalog.parquet").to_pydict()
    kept = sorted(cat["source_id"])
    assert not any("/dup" in k for k in kept), kept
    assert all(f"{MORUS}/k{i}.jpg" in kept for i in (0, 2, 3, 4, 5)) and f"{AMANITA}/twin.jpg" in kept
    assert f"{AMANITA}/mirror.jpg" in kept  # a mirrored photo is a different image
    with open(tmp_path / "out" / "build_report.csv", newline="") as f:
        report = list(csv.DictReader(f))
    excluded = [r for r in report if r["stage"] == "exclude"]
    assert len(excluded) == sum(1 for p in train.rglob("dup*"))
    assert all("duplicate" in r["reason"] and "evaluation image" in r["reason"] for r in excluded)
    dups = [r for r in report if r["stage"] == "duplicate"]
    # folders are read in sorted order: Fungi (the twin) before Plantae (k1), so k1 is the one removed
    assert len(dups) == 1 and dups[0]["source_id"].endswith("k1.jpg") and "twin.jpg" in dups[0]["reason"]
    assert result.failed == 0 and result.counts["exclude"] == len(excluded)
    # the builder records the hashes of a source image as it stores it: what the exclusion
    # index of an evaluation set is matched against
    row = cat["source_id"].index(f"{MORUS}/k0.jpg")
    assert source_image_hashes(str(train / MORUS / "k0.jpg"), size=48)["sha256"] == cat["sha256"][row]


def test_missing_exclusion_set_is_a_clear_error(tmp_path):
    from treeclip.errors import TreeclipError

    with pytest.raises(TreeclipError, match="no such evaluation set"):
        build_exclusion_index([str(tmp_path / "nope")], size=32, progress=False)
