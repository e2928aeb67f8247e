"""The shard reader: treeclip's TreeDataset, and plain webdataset code with no treeclip."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image

from treeclip.data.dataset import Sample, shard_paths, write_dataset
from treeclip.data.images import encode_jpeg
from treeclip.data.reader import TreeDataset
from treeclip.taxonomy.taxon import TEXT_TYPES, Taxon

TAXA = [Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", f"sp{i}",
                 common=f"magpie {i}") for i in range(4)]
N = 24


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    samples = [Sample(f"k{i:03d}", encode_jpeg(Image.new("RGB", (16, 16), (i * 10, 0, 0))), TAXA[i % 4], "train")
               for i in range(N)]
    write_dataset(samples, out, taxa=TAXA, build_info={}, shard_max_samples=4)
    return out


def test_yields_images_texts_classes(ds):
    items = list(TreeDataset(ds))
    assert [x["key"] for x in items] == [f"k{i:03d}" for i in range(N)]
    x = items[5]
    assert x["image"].mode == "RGB" and x["image"].size == (16, 16)
    assert x["cls"] == 1 and x["texts"] == TAXA[1].captions(TEXT_TYPES)
    assert x["meta"]["species"] == "sp1"


def test_seeded_shuffle(ds):
    keys = lambda **kw: [x["key"] for x in TreeDataset(ds, shuffle=8, **kw)]
    a, b, c = keys(seed=1), keys(seed=1), keys(seed=2)
    assert a == b and a != c and sorted(a) == sorted(c) == sorted(f"k{i:03d}" for i in range(N))
    d = TreeDataset(ds, shuffle=8, seed=1)
    d.set_epoch(1)
    assert [x["key"] for x in d] != a


def test_split_by_node_and_worker(ds, monkeypatch):
    # torch.distributed ranks as webdataset reads them from the environment
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = torch.utils.data.DataLoader(TreeDataset(ds, shuffle=4, seed=3), batch_size=None, num_workers=2,
                                             collate_fn=lambda x: x["key"])
        keys = list(loader)
        assert len(keys) == N // 2
        seen += keys
    assert sorted(seen) == sorted(f"k{i:03d}" for i in range(N))  # disjoint and complete


def test_resampled_is_endless_and_seeded(ds):
    import itertools

    take = lambda s: [x["key"] for x in itertools.islice(iter(TreeDataset(ds, resampled=True, seed=s)), 3 * N)]
    a = take(0)
    assert len(a) == 3 * N and a == take(0) and a != take(1)


def test_plain_webdataset_reads_shards_without_treeclip(ds):
    code = (
        "import sys, webdataset as wds\n"
        "urls = sys.argv[1:]\n"
        "ds = wds.WebDataset(urls, shardshuffle=False).decode('pil').to_tuple('jpg', 'taxon_com.txt', 'cls')\n"
        "rows = list(ds)\n"
        "assert 'treeclip' not in sys.modules\n"
        "print(len(rows), rows[1][0].size, rows[1][2], rows[1][1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *shard_paths(ds, "train")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == f"{N} (16, 16) 1 {TAXA[1].caption('taxon_com')}"
