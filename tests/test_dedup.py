"""Deduplication: near duplicates of evaluation images (re-encoded, resized, slightly
cropped) are removed from a build; different images, even of the same species, are kept;
exact duplicates inside the training set are removed; every removal is reported with its
reason. The perceptual hash is Meta's PDQ, at BioCLIP 2's distance of 10."""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from _data_helpers import AMANITA, MORUS, PICA, encoded, save
from treeclip.data.build import BuildOptions, build_dataset
from treeclip.data.dedup import DEFAULT_THRESHOLD, ExclusionIndex, build_exclusion_index, source_image_hashes
from treeclip.data.phash import HASH_BITS, hamming, phash, phash_quality, phash_variants
from treeclip.data.synth import load_species, look_of, render_batch


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    return Image.open(io.BytesIO(encoded(img, quality=quality))).convert("RGB")


def _photos(species: int, n: int, size: int = 256) -> list[Image.Image]:
    """`n` different synthetic photos of one species (same look, other pose, ground,
    clutter, light and noise), as JPEG quality 95."""
    sp = load_species()[species]
    return [_jpeg(Image.fromarray(a), 95)
            for a in render_batch(look_of(sp.taxon, sp.meaning), n, size, np.random.default_rng(species))]


def _copies(img: Image.Image) -> dict[str, Image.Image]:
    """Training copies of an evaluation image (saved as JPEG by the caller). PDQ is not
    crop-robust: the crops are the geometry of indexed crop variants (`phash_variants`:
    centred at 92%, bottom right at 94%); a few pixels off, they land 8-18 bits away."""
    w, h = img.size
    cw, ch, kw, kh = round(w * 0.92), round(h * 0.92), round(w * 0.94), round(h * 0.94)
    return {
        "reencoded": _jpeg(img, 40),
        "resized": img.resize((w * 180 // 256, h * 180 // 256), Image.Resampling.BICUBIC),
        "cropped": img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)),
        "corner_cropped": img.crop((w - kw, h - kh, w, h)),
    }


def test_pdq_catches_a_reencoded_resized_copy_but_not_another_photo_of_the_species():
    photo, other, *_ = _photos(0, 2)
    copy = _jpeg(photo.resize((180, 180), Image.Resampling.BICUBIC), 60)  # q95 256 px -> q60 180 px
    d_copy, d_other = hamming(phash(photo), phash(copy)), hamming(phash(photo), phash(other))
    assert d_copy <= DEFAULT_THRESHOLD == 10, d_copy  # measured: 6
    assert d_other >= 8 * DEFAULT_THRESHOLD, d_other  # measured: 130
    d_species = hamming(phash(photo), phash(_photos(1, 1)[0]))
    assert d_species >= 8 * DEFAULT_THRESHOLD, d_species
    # through the index, with the crop variants an evaluation image is indexed with
    index = ExclusionIndex()
    index.add("eval", "-", phash_variants(photo))
    got = index.match_many(["a", "b", "c"], [phash(copy), phash(other), phash(_photos(1, 1)[0])])
    assert got[0] == ("near", "eval", d_copy) and got[1:] == [None, None]


def test_pdq_hash_format_and_colour_modes():
    rgb = _photos(2, 1)[0]
    h = phash(rgb)
    assert len(h) == HASH_BITS // 4 and int(h, 16).bit_count() == HASH_BITS // 2  # median threshold
    bits, quality = phash_quality(rgb)
    assert bits.tobytes().hex() == h and quality >= 50
    modes = {m: rgb.convert(m) for m in ("L", "P", "RGBA", "CMYK", "LA")}
    modes["I;16"] = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    assert modes["I;16"].mode == "I;16"
    for mode, img in modes.items():
        assert hamming(h, phash(img)) <= DEFAULT_THRESHOLD, mode  # grey levels or palette: the same picture
    assert len(phash_variants(modes["P"])) == 51
    assert hamming(h, phash(rgb.convert("1"))) <= 3 * DEFAULT_THRESHOLD  # dithered to black and white: 14
    # big images are reduced before hashing: same hash class as the image at a usual size
    big = rgb.resize((3000, 2000), Image.Resampling.BICUBIC)
    assert hamming(phash(big), phash(rgb.resize((768, 512), Image.Resampling.BICUBIC))) <= DEFAULT_THRESHOLD
    # a flat or tiny image: no information, PDQ's quality 0
    assert phash_quality(Image.new("RGB", (2, 3)))[1] == 0


def test_index_matches_near_duplicates_only(tmp_path):
    photos = _photos(0, 8)
    # photo 0's 180 px copy is 14 bits off: PDQ at 10 misses some resized copies (docs/data.md)
    evals, others = photos[1:4], photos[4:] + _photos(1, 5)  # others: the same species too
    index = ExclusionIndex()
    for s, img in enumerate(evals):
        h = source_image_hashes(str(save(img, tmp_path / f"eval{s}.png", "PNG")), size=64, variants=True)
        index.add(f"eval{s}", h["sha256"], h["phashes"])
    queries, expect = [], []
    for s, img in enumerate(evals):
        for name, v in _copies(img).items():
            path = save(v, tmp_path / f"{s}-{name}.jpg", quality=60 if name == "resized" else 90)
            queries.append(source_image_hashes(str(path), size=64))
            expect.append(f"eval{s}")
    for i, img in enumerate(others):
        queries.append(source_image_hashes(str(save(img, tmp_path / f"other{i}.jpg")), size=64))
        expect.append(None)
    exact = source_image_hashes(str(save(evals[2], tmp_path / "same.bmp", "BMP")), size=64)  # same pixels, other format
    queries.append(exact)
    expect.append("eval2")
    got = index.match_many([q["sha256"] for q in queries], [q["phash"] for q in queries])
    assert [m and m[1] for m in got] == expect
    assert got[-1][0] == "exact"
    # the threshold is what decides: just below a copy's distance, the copy is kept
    resized = queries[1]
    d = got[1][2]
    assert d > 0
    h = source_image_hashes(str(tmp_path / "eval0.png"), size=64, variants=True)
    for threshold, expected in ((d, "eval0"), (d - 1, None)):
        index = ExclusionIndex(threshold=threshold)
        index.add("eval0", h["sha256"], h["phashes"])
        m = index.match(resized["sha256"], resized["phash"])
        assert (m and m[1]) == expected


def test_build_removes_evaluation_and_training_duplicates(tmp_path):
    # evaluation set as a task dir (task.toml + catalog.csv)
    task = tmp_path / "task"
    rows = ["path,kingdom,phylum,class,order,family,genus,species,common"]
    evals = _photos(2, 3)
    for s, img in enumerate(evals):
        save(img, task / "images" / f"e{s}.png", "PNG")
        rows.append(f"images/e{s}.png,Animalia,Chordata,Aves,Passeriformes,Corvidae,Pica,hudsonia,")
    (task / "catalog.csv").write_text("\n".join(rows) + "\n")
    (task / "task.toml").write_text('name = "t"\n[images]\ncatalog = "catalog.csv"\nroot = "."\n')
    # training folder: copies of the evaluation images, distinct images, and an exact twin
    train = tmp_path / "train"
    for s, img in enumerate(evals):
        for name, v in _copies(img).items():
            if (s + len(name)) % 2 == 0 or name == "cropped":
                save(v, train / PICA / f"dup{s}-{name}.jpg", quality=60 if name == "resized" else 90)
    distinct = _photos(2, 9)[3:]  # other photos of the evaluation images' species
    keep = [save(img, train / MORUS / f"k{i}.jpg") for i, img in enumerate(distinct)]
    (train / AMANITA).mkdir()
    (train / AMANITA / "twin.jpg").write_bytes(keep[1].read_bytes())  # the same photo filed twice
    save(distinct[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT), train / AMANITA / "mirror.jpg")
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


def test_flat_evaluation_images_match_only_exactly(tmp_path):
    """PDQ gives flat images no information (quality 0: their hash is rounding noise): an
    evaluation image like that is indexed for exact matches only, so a flat training image
    (a blank frame, a grey card) is never taken for its near duplicate by chance."""
    grey = Image.new("RGB", (256, 256), (128, 128, 128))
    dark = Image.new("RGB", (256, 256), (20, 20, 20))
    assert phash_quality(grey)[1] < 50 and phash_quality(dark)[1] < 50
    h = source_image_hashes(str(save(grey, tmp_path / "eval.png", "PNG")), size=64, variants=True)
    assert h["phashes"] == []
    index = ExclusionIndex()
    index.add("grey", h["sha256"], h["phashes"])
    other = source_image_hashes(str(save(dark, tmp_path / "dark.png", "PNG")), size=64)
    same = source_image_hashes(str(save(grey, tmp_path / "copy.bmp", "BMP")), size=64)
    assert index.match(other["sha256"], other["phash"]) is None
    assert index.match(same["sha256"], same["phash"])[0] == "exact"
