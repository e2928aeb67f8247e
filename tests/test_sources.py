"""Source readers: image folders, CSV/Parquet catalogs, iNat JSON; path traversal refused."""

from __future__ import annotations

import json
import re
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _data_helpers import scene, save
from treeclip.data.sources import read_catalog, read_image_folder, read_inat_json, read_source, safe_join
from treeclip.errors import InputError, TreeclipError


def test_image_folder_name_styles(tmp_path):
    root = tmp_path / "imgs"
    save(scene(0), root / "Pica hudsonia" / "a.jpg")
    save(scene(1), root / "00042_Animalia_Chordata_Aves_Passeriformes_Corvidae_Pica_pica" / "b.png", "PNG")
    save(scene(2), root / "Plantae" / "Tracheophyta" / "Magnoliopsida" / "Rosales" / "Moraceae" / "Morus" / "alba" / "c.jpg")
    save(scene(3), root / "loose.jpg")
    (root / "Pica hudsonia" / "notes.txt").write_text("not an image")
    items = {it.source_id: it for it in read_image_folder(root)}
    assert set(items) == {"Pica hudsonia/a.jpg", "00042_Animalia_Chordata_Aves_Passeriformes_Corvidae_Pica_pica/b.png",
                          "Plantae/Tracheophyta/Magnoliopsida/Rosales/Moraceae/Morus/alba/c.jpg", "loose.jpg"}
    assert items["Pica hudsonia/a.jpg"].name == "Pica hudsonia" and not items["Pica hudsonia/a.jpg"].ranks
    b = dict(items["00042_Animalia_Chordata_Aves_Passeriformes_Corvidae_Pica_pica/b.png"].ranks)
    assert b["kingdom"] == "Animalia" and b["species"] == "pica"
    c = dict(items["Plantae/Tracheophyta/Magnoliopsida/Rosales/Moraceae/Morus/alba/c.jpg"].ranks)
    assert c["genus"] == "Morus" and c["species"] == "alba"
    assert "class folder" in items["loose.jpg"].error
    assert all(os.path.isabs(it.path) for it in items.values())


def test_catalog_csv_subset_of_ranks_and_traversal(tmp_path):
    save(scene(0), tmp_path / "img" / "a.jpg")
    outside = save(scene(1), tmp_path.parent / f"{tmp_path.name}-outside.jpg")
    (tmp_path / "img" / "link.jpg").symlink_to(outside)
    (tmp_path / "cat.csv").write_text(
        "filename,genus,species,common_name,source_id\n"
        "img/a.jpg,Pica,hudsonia,black-billed magpie,obs1\n"
        f"../{outside.name},Pica,pica,,obs2\n"
        f"{outside},Pica,pica,,obs3\n"
        "img/link.jpg,Pica,pica,,obs4\n", encoding="utf-8")
    items = list(read_catalog(tmp_path / "cat.csv"))
    assert [it.source_id for it in items] == ["obs1", "obs2", "obs3", "obs4"]
    a = items[0]
    assert dict(a.ranks) == {"genus": "Pica", "species": "hudsonia"} and a.common == "black-billed magpie"
    assert a.error == "" and a.path == str((tmp_path / "img" / "a.jpg").resolve())
    for it in items[1:]:
        assert it.path == "" and "escapes the image root" in it.error and "\n" not in it.error
    # with an explicit root that contains the file, the absolute path is fine
    items = list(read_source("catalog", f"{tmp_path / 'cat.csv'}::{tmp_path.parent}"))
    assert items[2].error == ""


def test_catalog_parquet_and_scientific_name(tmp_path):
    save(scene(0), tmp_path / "a.jpg")
    pq.write_table(pa.table({"path": ["a.jpg"], "scientific_name": ["Morus alba L."], "kingdom": ["Plantae"]}),
                   tmp_path / "cat.parquet")
    (it,) = read_catalog(tmp_path / "cat.parquet")
    assert it.name == "Morus alba L." and dict(it.ranks) == {"kingdom": "Plantae"} and it.source_id == "a.jpg"


@pytest.mark.parametrize("content, message", [
    (b"path,genus\na.jpg,Pica\n\xe9t\xe9.jpg,Morus\n", "not UTF-8 text (line 3"),
    (b"genus,species\nPica,pica\n", "no image path column"),
    (b"path,colour\na.jpg,red\n", "no rank columns"),
    (b"path,genus\na.jpg,Pica,extra\n", "line 2 has more fields"),
])
def test_malformed_catalogs_fail_with_one_line(tmp_path, content, message):
    (tmp_path / "cat.csv").write_bytes(content)
    with pytest.raises(TreeclipError, match=re.escape(message)) as e:
        list(read_catalog(tmp_path / "cat.csv"))
    assert str(tmp_path / "cat.csv") in str(e.value) and "\n" not in str(e.value)


def test_inat_json(tmp_path):
    save(scene(0), tmp_path / "train" / "x" / "1.jpg")
    data = {
        "images": [{"id": 1, "file_name": "train/x/1.jpg"}, {"id": 2, "file_name": "train/x/2.jpg"},
                   {"id": 3, "file_name": "../../etc/passwd"}],
        "annotations": [{"image_id": 1, "category_id": 7}, {"image_id": 3, "category_id": 7}],
        "categories": [{"id": 7, "name": "Pica hudsonia", "common_name": "Black-billed Magpie",
                        "kingdom": "Animalia", "phylum": "Chordata", "class": "Aves", "order": "Passeriformes",
                        "family": "Corvidae", "genus": "Pica", "specific_epithet": "hudsonia"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(data))
    items = list(read_inat_json(tmp_path / "train.json"))
    assert dict(items[0].ranks)["species"] == "hudsonia" and items[0].common == "Black-billed Magpie"
    assert items[0].error == "" and items[0].source_id == "1"
    assert "no annotation" in items[1].error
    assert "escapes" in items[2].error
    (tmp_path / "bad.json").write_bytes(b"{not json")
    with pytest.raises(TreeclipError, match="not valid UTF-8 JSON"):
        list(read_inat_json(tmp_path / "bad.json"))


def test_safe_join(tmp_path):
    assert safe_join(tmp_path, "a/../b.jpg") == (tmp_path / "b.jpg").resolve()
    for bad in ("../x.jpg", "/etc/passwd", "a/../../x.jpg", ""):
        for follow in (True, False):
            with pytest.raises(InputError):
                safe_join(tmp_path, bad, follow_links=follow)
    # a link out of the root: refused when links are followed (the builder), trusted as the
    # user's own when they are not (evaluation tasks), and then returned unresolved
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "store").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(InputError, match="escapes the image root"):
        safe_join(tmp_path / "root", "store/b.jpg")
    assert safe_join(tmp_path / "root", "store/./b.jpg", follow_links=False) == tmp_path / "root" / "store" / "b.jpg"
