"""The dataset dir writer: shards with the BioCLIP keys, captions exactly as the taxonomy
core writes them, catalog/taxa/manifest, checksums, determinism."""

from __future__ import annotations

import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from treeclip.data.dataset import Sample, read_manifest, read_taxa, shard_paths, verify_shards, write_dataset
from treeclip.data.images import encode_jpeg
from treeclip.errors import TreeclipError
from treeclip.taxonomy.taxon import TEXT_TYPES, Taxon

TAXA = [
    Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia",
             common="black-billed magpie"),
    Taxon.of("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba"),
    Taxon.of("Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita"),
]


def _samples(n: int = 12) -> list[Sample]:
    out = []
    for i in range(n):
        img = Image.new("RGB", (32, 32), (i * 20 % 256, 100, 200 - i * 10))
        out.append(Sample(f"s{i:04d}", encode_jpeg(img), TAXA[i % 3], "val" if i % 4 == 3 else "train",
                          source="test", source_id=str(i)))
    return out


def _members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_write_dataset_layout_and_captions(tmp_path):
    manifest = write_dataset(_samples(), tmp_path / "ds", taxa=TAXA, build_info={"by": "test"},
                             shard_max_samples=4)
    ds = tmp_path / "ds"
    assert manifest == read_manifest(ds)
    assert manifest["n_samples"] == 12 and manifest["splits"]["train"]["n_samples"] == 9
    assert [s["n_samples"] for s in manifest["splits"]["train"]["shards"]] == [4, 4, 1]
    assert manifest["text_types"] == list(TEXT_TYPES)
    assert read_taxa(ds) == TAXA
    paths = shard_paths(ds, "train")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    members = _members(paths[0])
    for i in (0, 1, 2):
        key, taxon = f"s{i:04d}", TAXA[i % 3]
        for t in TEXT_TYPES:
            assert members[f"{key}.{t}.txt"].decode("utf-8") == taxon.caption(t)
        assert int(members[f"{key}.cls"]) == i % 3
        meta = json.loads(members[f"{key}.json"])
        assert meta["species"] == taxon.species and meta["source_id"] == str(i)
        assert len(meta["sha256"]) == 64 and len(meta["phash"]) == 64
        assert members[f"{key}.jpg"][:2] == b"\xff\xd8"
    cat = pq.read_table(ds / "catalog.parquet").to_pydict()
    assert cat["key"] == [s.key for s in _samples()]
    assert cat["shard"][3] == "val/shard-000000.tar"
    taxa = pq.read_table(ds / "taxa.parquet").to_pydict()
    assert taxa["n_images"] == [4, 4, 4]
    assert verify_shards(ds) == []
    assert not list(ds.rglob("*.tmp"))


def test_same_samples_give_identical_bytes(tmp_path):
    a = write_dataset(_samples(), tmp_path / "a", taxa=TAXA, build_info={}, shard_max_samples=5)
    b = write_dataset(_samples(), tmp_path / "b", taxa=TAXA, build_info={}, shard_max_samples=5)
    assert a["splits"] == b["splits"]
    assert (tmp_path / "a/catalog.parquet").read_bytes() == (tmp_path / "b/catalog.parquet").read_bytes()


def test_byte_limit_and_stale_shards_removed(tmp_path):
    ds = tmp_path / "ds"
    write_dataset(_samples(), ds, taxa=TAXA, build_info={}, shard_max_samples=1)
    assert len(list((ds / "train").glob("*.tar"))) == 9
    m = write_dataset(_samples(), ds, taxa=TAXA, build_info={}, shard_max_bytes=20_000)
    assert len(list((ds / "train").glob("*.tar"))) == len(m["splits"]["train"]["shards"]) > 1
    assert all(s["bytes"] <= 20_000 + 10_240 for s in m["splits"]["train"]["shards"])


def test_verify_detects_corruption(tmp_path):
    ds = tmp_path / "ds"
    write_dataset(_samples(), ds, taxa=TAXA, build_info={})
    p = ds / "train" / "shard-000000.tar"
    data = bytearray(p.read_bytes())
    data[700] ^= 0xFF
    p.write_bytes(bytes(data))
    problems = verify_shards(ds)
    assert len(problems) == 1 and "sha256" in problems[0]


def test_bad_samples_rejected(tmp_path):
    s = _samples(1)[0]
    with pytest.raises(ValueError, match="dots"):
        write_dataset([Sample("a.b", s.image, TAXA[0], "train")], tmp_path / "x", taxa=TAXA, build_info={})
    with pytest.raises(ValueError, match="not in"):
        write_dataset([Sample("a", s.image, Taxon.of("Animalia"), "train")], tmp_path / "y", taxa=TAXA,
                      build_info={})
    assert not list((tmp_path / "y").rglob("*.tar")) and not list((tmp_path / "y").rglob("*.tmp"))
    with pytest.raises(TreeclipError, match="not a dataset dir"):
        read_manifest(tmp_path / "y")


def test_images_of_given_samples_are_read_by_key(tmp_path):
    from treeclip.data.shards import iter_shard_images

    samples = _samples(4)
    write_dataset(samples, tmp_path, taxa=TAXA, build_info={})
    (shard,) = shard_paths(tmp_path, "train")
    got = list(iter_shard_images(shard, ["s0002", "s0000", "nope"]))
    assert [(k, b) for k, b, _ in got[:2]] == [("s0000", samples[0].image), ("s0002", samples[2].image)]
    assert got[2][:2] == ("nope", None) and "sample nope has no image" in got[2][2]
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all" * 64)
    got = list(iter_shard_images(tmp_path / "broken.tar", ["a", "b"]))
    assert [k for k, _, _ in got] == ["a", "b"] and all(b is None and "unreadable shard" in p for _, b, p in got)
