"""The builder: captions in shards, resume after an interrupted build, every bad input
skipped with its reason, mixed sources through the NCBI resolver, the CLI."""

from __future__ import annotations

import csv
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from _data_helpers import AMANITA, HEIC, MORUS, PICA, encoded, make_folder, save, scene, zeros_png
from treeclip.data.build import BuildOptions, build_dataset
from treeclip.data.dataset import read_manifest, read_taxa, shard_paths, verify_shards
from treeclip.errors import TreeclipError
from treeclip.taxonomy.taxon import TEXT_TYPES

OPTS = dict(size=32, resolve=False, workers=1, chunk_size=3, shard_max_samples=4, val_fraction=0.2)


def _report(out) -> list[dict]:
    with open(out / "build_report.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_shard_texts_match_taxon_captions(tmp_path):
    src = make_folder(tmp_path / "src", per_class=3)
    build_dataset([("folder", str(src))], tmp_path / "out", BuildOptions(**OPTS), progress=False)
    taxa = read_taxa(tmp_path / "out")
    assert sorted(t.taxonomic_name for t in taxa) == sorted([PICA, MORUS, AMANITA])
    n = 0
    for split in ("train", "val"):
        for path in shard_paths(tmp_path / "out", split):
            with tarfile.open(path) as tar:
                files = {m.name: tar.extractfile(m).read() for m in tar}
            for name in [k for k in files if k.endswith(".cls")]:
                key = name[:-4]
                taxon = taxa[int(files[name])]
                for t in TEXT_TYPES:
                    assert files[f"{key}.{t}.txt"].decode() == taxon.caption(t)
                assert Image.open(__import__("io").BytesIO(files[f"{key}.jpg"])).size == (32, 32)
                n += 1
    assert n == 9 and read_manifest(tmp_path / "out")["splits"]["val"]["n_samples"] == 2


def _tree(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_resume_after_interruption_gives_identical_dataset(tmp_path):
    src = make_folder(tmp_path / "src", per_class=5)
    opts = BuildOptions(**OPTS)
    build_dataset([("folder", str(src))], tmp_path / "full", opts, progress=False)

    class Killed(Exception):
        pass

    def kill_after_two(index):
        if index == 1:
            raise Killed()

    with pytest.raises(Killed):
        build_dataset([("folder", str(src))], tmp_path / "resumed", opts, progress=False, on_chunk_done=kill_after_two)
    staged = sorted(p.name for p in (tmp_path / "resumed" / ".build").glob("chunk-*.json"))
    assert staged == ["chunk-000000.json", "chunk-000001.json"]
    (tmp_path / "resumed" / ".build" / ".chunk-000002.jpgs.xyz.tmp").write_bytes(b"half-written")  # a killed write
    done = []
    build_dataset([("folder", str(src))], tmp_path / "resumed", opts, progress=False, resume=True,
                  on_chunk_done=done.append)
    assert sorted(done) == [2, 3, 4]  # 15 images in chunks of 3: only the unfinished ones ran
    full, resumed = _tree(tmp_path / "full"), _tree(tmp_path / "resumed")
    assert full.keys() == resumed.keys() and full == resumed
    cat = pq.read_table(tmp_path / "resumed" / "catalog.parquet").to_pydict()
    assert len(cat["key"]) == len(set(cat["key"])) == 15


def test_interrupted_rebuild_is_refused_by_every_reader(tmp_path):
    from treeclip.data.dataset import read_catalog, split_samples
    from treeclip.data.info import dataset_summary
    from treeclip.data.reader import TreeDataset

    src = make_folder(tmp_path / "src", per_class=3)
    out = tmp_path / "out"
    build_dataset([("folder", str(src))], out, BuildOptions(**OPTS), progress=False)
    old_catalog = read_catalog(out)
    # a source that is not there fails before anything changes: the old dataset stays whole
    with pytest.raises(TreeclipError, match="not a folder"):
        build_dataset([("folder", str(tmp_path / "gone"))], out, BuildOptions(**OPTS), progress=False)
    assert read_catalog(out).equals(old_catalog) and verify_shards(out) == []

    class Killed(Exception):
        pass

    def killed(index):
        raise Killed()

    rebuild = BuildOptions(**{**OPTS, "seed": 5})
    with pytest.raises(Killed):
        build_dataset([("folder", str(src))], out, rebuild, progress=False, on_chunk_done=killed)
    assert (out / "train" / "shard-000000.tar").exists()  # the old shards are still there ...
    readers = [read_manifest, read_taxa, read_catalog, lambda d: split_samples(d, "train"),
               lambda d: shard_paths(d, "train"), lambda d: TreeDataset(d), dataset_summary, verify_shards]
    for read in readers:  # ... but no reader takes the dir for a finished dataset
        with pytest.raises(TreeclipError) as e:
            read(out)
        msg = str(e.value)
        assert msg.startswith(f"{out}: unfinished dataset") and "--resume" in msg and "\n" not in msg
    build_dataset([("folder", str(src))], out, rebuild, progress=False, resume=True)
    build_dataset([("folder", str(src))], tmp_path / "fresh", rebuild, progress=False)
    assert _tree(out) == _tree(tmp_path / "fresh")


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "src" / "Pica pica").mkdir(parents=True)
    (tmp_path / "src" / "Pica pica" / "a.jpg").write_bytes(b"")
    with pytest.raises(TreeclipError, match="no usable images among 1 inputs"):
        build_dataset([("folder", str(tmp_path / "src"))], tmp_path / "out", BuildOptions(**OPTS), progress=False)
    assert "empty file" in (tmp_path / "out" / "build_report.csv").read_text()


def test_resume_refuses_changed_inputs(tmp_path):
    src = make_folder(tmp_path / "src", per_class=2)
    opts = BuildOptions(**{**OPTS, "keep_work": True})
    build_dataset([("folder", str(src))], tmp_path / "out", opts, progress=False)
    with pytest.raises(TreeclipError, match="changed since the interrupted build"):
        build_dataset([("folder", str(src))], tmp_path / "out", BuildOptions(**{**OPTS, "size": 40}),
                      progress=False, resume=True)
    assert read_manifest(tmp_path / "out") and verify_shards(tmp_path / "out") == []  # a refusal changes nothing


def test_split_is_seeded(tmp_path):
    src = make_folder(tmp_path / "src", per_class=4)
    vals = []
    for seed in (0, 0, 1):
        out = tmp_path / f"out{len(vals)}"
        build_dataset([("folder", str(src))], out, BuildOptions(**{**OPTS, "seed": seed, "val_fraction": 0.25}),
                      progress=False)
        cat = pq.read_table(out / "catalog.parquet").to_pydict()
        vals.append(sorted(k for k, s in zip(cat["key"], cat["split"]) if s == "val"))
    assert len(vals[0]) == 3 and vals[0] == vals[1] and vals[0] != vals[2]


def _bad_inputs(root):
    """Every bad-input case, and odd but valid colour modes, in one class folder."""
    good = encoded(scene(7))
    d = root / PICA
    d.mkdir(parents=True)
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_bytes(b"hello, I am not a picture\n")
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    png = encoded(scene(7), "PNG")
    at = png.index(b"IDAT") + 60
    (d / "corrupt.png").write_bytes(png[:at] + bytes(range(200)) + png[at + 200:])  # garbled pixel data
    (d / "bomb.png").write_bytes(encoded(Image.new("1", (12000, 12000)), "PNG"))
    save(scene(8).convert("CMYK"), d / "cmyk.jpg")
    save(scene(9).convert("LA"), d / "la.png", "PNG")
    save(Image.fromarray((np.asarray(scene(10).convert("L"), dtype=np.uint16) * 257)), d / "i16.png", "PNG")
    save(scene(11).convert("RGBA"), d / "rgba.png", "PNG")
    save(scene(12).convert("P"), d / "p.gif", "GIF")
    return {"zero.jpg": "empty file", "text.jpg": "not an image", "truncated.jpg": "truncated",
            "corrupt.png": "corrupt image data", "bomb.png": "too many pixels"}


def test_every_bad_input_is_skipped_with_its_reason(tmp_path):
    src = tmp_path / "src"
    expected = _bad_inputs(src)
    save(scene(1), tmp_path / "outside.jpg")
    (tmp_path / "cat.csv").write_text("path,genus,species\n../outside.jpg,Pica,pica\nmissing.jpg,Pica,pica\n"
                                      "x.jpg,,\n")
    opts = BuildOptions(**{**OPTS, "max_pixels": 50_000_000})
    result = build_dataset([("folder", str(src)), ("catalog", str(tmp_path / "cat.csv") + "::" + str(src))],
                           tmp_path / "out", opts, progress=False)
    report = _report(tmp_path / "out")
    by_file = {r["source_id"].rsplit("/", 1)[-1]: r for r in report}
    for fname, reason in expected.items():
        assert by_file[fname]["stage"] == "image" and reason in by_file[fname]["reason"], by_file[fname]
    assert by_file["outside.jpg"]["stage"] == "input" and "escapes the image root" in by_file["outside.jpg"]["reason"]
    assert by_file["missing.jpg"]["stage"] == "image" and "not found" in by_file["missing.jpg"]["reason"]
    assert by_file["x.jpg"]["stage"] == "taxonomy" and "no usable name" in by_file["x.jpg"]["reason"]
    assert all("\n" not in r["reason"] for r in report)
    cat = pq.read_table(tmp_path / "out" / "catalog.parquet").to_pydict()
    assert sorted(s.rsplit("/", 1)[-1] for s in cat["source_id"]) == ["cmyk.jpg", "i16.png", "la.png", "p.gif",
                                                                       "rgba.png"]
    assert result.failed == len(expected) + 3 and verify_shards(tmp_path / "out") == []


def test_heic_and_aspect_bombs_in_a_folder_get_report_rows(tmp_path, monkeypatch):
    from treeclip.data import images

    monkeypatch.setattr(images, "heif_supported", lambda: False)  # as where pillow-heif is not installed
    src = make_folder(tmp_path / "src", per_class=2)
    (src / PICA / "IMG_0001.heic").write_bytes(HEIC)
    (src / PICA / "strip.png").write_bytes(zeros_png(2_000_000, 25))
    result = build_dataset([("folder", str(src))], tmp_path / "out", BuildOptions(**OPTS), progress=False)
    by_file = {r["source_id"].rsplit("/", 1)[-1]: r for r in _report(tmp_path / "out")}
    assert by_file["IMG_0001.heic"]["stage"] == "image"
    assert by_file["IMG_0001.heic"]["reason"].endswith("IMG_0001.heic: HEIC needs pillow-heif: pip install pillow-heif")
    assert by_file["strip.png"]["stage"] == "image" and "too large to resize" in by_file["strip.png"]["reason"]
    assert result.failed == 2 and result.counts["samples"] == 6


def test_mixed_sources_resolved_against_ncbi(tmp_path):
    # folder named by scientific name only, a catalog with a genus + epithet, an iNat JSON,
    # and a made-up name that NCBI does not know
    save(scene(1), tmp_path / "folder" / "Pica hudsonia" / "a.jpg")
    save(scene(2), tmp_path / "folder" / "Fakeus imaginarius" / "b.jpg")
    save(scene(3), tmp_path / "cat" / "c.jpg")
    (tmp_path / "cat" / "cat.csv").write_text("image,genus,species,source_id\nc.jpg,Morus,alba,obs-9\n")
    save(scene(4), tmp_path / "inat" / "d.jpg")
    (tmp_path / "inat" / "train.json").write_text(json.dumps({
        "images": [{"id": 5, "file_name": "d.jpg"}], "annotations": [{"image_id": 5, "category_id": 1}],
        "categories": [{"id": 1, "kingdom": "Fungi", "phylum": "Basidiomycota", "class": "Agaricomycetes",
                        "order": "Agaricales", "family": "Amanitaceae", "genus": "Amanita",
                        "specific_epithet": "muscaria", "common_name": "Fly Agaric"}]}))
    sources = [("folder", str(tmp_path / "folder")), ("catalog", str(tmp_path / "cat" / "cat.csv")),
               ("inat", str(tmp_path / "inat" / "train.json"))]
    opts = BuildOptions(**{**OPTS, "resolve": True, "val_fraction": 0})
    result = build_dataset(sources, tmp_path / "drop", opts, progress=False)
    names = {t.scientific_name: t for t in read_taxa(tmp_path / "drop")}
    assert set(names) == {"Pica hudsonia", "Morus alba", "Amanita muscaria"}
    assert names["Pica hudsonia"].family == "Corvidae" and names["Morus alba"].kingdom == "Plantae"
    assert names["Amanita muscaria"].common == "Fly Agaric"  # the source's common name wins
    (row,) = [r for r in _report(tmp_path / "drop") if r["stage"] == "taxonomy"]
    assert "Fakeus imaginarius" in row["source_id"] and "unresolved" in row["reason"]
    assert result.failed == 1
    cat = pq.read_table(tmp_path / "drop" / "catalog.parquet").to_pydict()
    assert "obs-9" in cat["source_id"] and set(cat["source"]) == {"folder:folder", "catalog:cat.csv", "inat:train.json"}
    # keep: the unknown name stays, as given
    build_dataset(sources, tmp_path / "keep", BuildOptions(**{**OPTS, "resolve": True, "val_fraction": 0,
                                                              "unresolved": "keep"}), progress=False)
    assert "Fakeus imaginarius" in {t.scientific_name for t in read_taxa(tmp_path / "keep")}


def test_cli_build_and_info_in_parallel(tmp_path):
    from treeclip.cli import cli

    src = make_folder(tmp_path / "src", per_class=4)
    (src / PICA / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    runner = CliRunner()
    res = runner.invoke(cli, ["data", "build", str(tmp_path / "out"), "--folder", str(src), "--no-resolve",
                              "--size", "32", "--workers", "2", "--chunk-size", "2", "--shard-size", "5", "-q"])
    assert res.exit_code == 1, res.output  # finished, one input failed
    assert "12 samples" in res.output and "1 bad images" in res.output
    serial = build_dataset([("folder", str(src))], tmp_path / "serial",
                           BuildOptions(size=32, resolve=False, workers=1, chunk_size=2, shard_max_samples=5),
                           progress=False)
    assert _tree(tmp_path / "out") == _tree(tmp_path / "serial")  # parallel == serial, byte for byte
    info = runner.invoke(cli, ["data", "info", str(tmp_path / "out")])
    assert info.exit_code == 0 and "checksums: every shard matches" in info.output
    assert f"a photo of {PICA.split()[-2]} {PICA.split()[-1]}." in info.output or "sci" in info.output
    shard = tmp_path / "out" / "train" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1024])
    info = runner.invoke(cli, ["data", "info", str(tmp_path / "out")])
    assert info.exit_code == 1 and "failed" in info.output
    assert serial.counts["samples"] == 12
