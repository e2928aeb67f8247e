"""Finding inputs: files, folders, globs, path lists, CSV columns, Python objects."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from predict_helpers import jpeg, make_images
from treeclip.errors import TreeclipError
from treeclip.predict.inputs import as_items, gather, unique_names


def test_folders_are_scanned_recursively_and_sorted(tmp_path):
    paths = make_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "readme.txt").write_text("x")
    (tmp_path / "imgs" / ".hidden.jpg").write_bytes(jpeg((1, 1, 1)))
    items = gather([str(tmp_path / "imgs")])
    assert sorted(it.name for it in items) == sorted(map(str, paths))
    assert all(it.name == it.source for it in items)


def test_globs_files_lists_and_csv_columns_keep_order_without_repeats(tmp_path, monkeypatch):
    paths = make_images(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    pngs = gather(["imgs/**/*.png"])
    assert [it.name for it in pngs] == sorted(str(p.relative_to(tmp_path)) for p in paths if p.suffix == ".png")
    (tmp_path / "list.txt").write_text("# my photos\nimgs/img0.jpg\n\nimgs/img1.jpg\n")
    (tmp_path / "cat.csv").write_text("path,species\nimgs/img1.jpg,x\nimgs/img3.jpg,y\n")
    items = gather(["imgs/img3.jpg", "missing.jpg"], list_file="list.txt", csv_file="cat.csv", column="path")
    assert [it.name for it in items] == ["imgs/img3.jpg", "missing.jpg", "imgs/img0.jpg", "imgs/img1.jpg"]
    with pytest.raises(TreeclipError, match="cat.csv: no column 'file'"):
        gather([], csv_file="cat.csv", column="file")


def test_csv_root_option(tmp_path):
    make_images(tmp_path / "imgs")
    (tmp_path / "cat.csv").write_text("file_name\nimg0.jpg\n")
    items = gather([], csv_file=str(tmp_path / "cat.csv"), root=str(tmp_path / "imgs"))
    assert [it.source for it in items] == [os.path.join(str(tmp_path / "imgs"), "img0.jpg")]


def test_python_inputs(tmp_path):
    make_images(tmp_path / "imgs")
    img = Image.new("RGB", (10, 10))
    items = as_items([img, jpeg((5, 5, 5)), str(tmp_path / "imgs" / "img0.jpg"), tmp_path / "imgs" / "sub"])
    assert [it.name for it in items][:2] == ["image-0", "bytes-1"]
    assert len(items) == 5  # the sub folder holds two images
    with pytest.raises(TypeError):
        as_items([42])
    assert [it.name for it in unique_names(as_items(["a.jpg", "a.jpg"]))] == ["a.jpg", "a.jpg#2"]
