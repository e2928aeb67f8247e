"""The one table reader (CSV/TSV/Parquet -> rows -> taxa) and the shared definitions that
the builder, the evaluation tasks and predict all read: common-name columns, image file
endings, the safe path join."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from treeclip.data.tables import read_rows, read_taxa_table, taxon_from_row
from treeclip.errors import TreeclipError
from treeclip.taxonomy.taxon import Taxon

MAGPIE = Taxon.of("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia",
                  common="Black-billed Magpie")


@pytest.mark.parametrize("name, text", [
    ("comma.csv", "Path , Genus\n a.jpg ,Pica\n"),
    ("tabs.tsv", "Path\tGenus\na.jpg\tPica\n"),
    ("tabs.csv", "Path\tGenus\na.jpg\tPica\n"),  # no .tsv suffix: the header says tab
    ("semi.csv", "Path;Genus\na.jpg;Pica\n"),
    ("bom.csv", "\ufeffpath,genus\na.jpg,Pica\n"),
])
def test_rows_from_every_csv_dialect(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    assert read_rows(tmp_path / name) == [{"path": "a.jpg", "genus": "Pica"}]


def test_rows_from_parquet_are_text(tmp_path):
    pq.write_table(pa.table({"Path": ["a.jpg", None], "n": [1, 2], "score": [float("nan"), 0.5]}),
                   tmp_path / "t.parquet")
    assert read_rows(tmp_path / "t.parquet") == [{"path": "a.jpg", "n": "1", "score": ""},
                                                 {"path": "", "n": "2", "score": "0.5"}]


@pytest.mark.parametrize("name, content, message", [
    ("missing.csv", None, "file not found"),
    ("latin1.csv", "genus\nM\xfcller\n".encode("latin-1"), "not UTF-8 text (line 2"),
    ("empty.csv", b"  \n", "empty catalog (no header row)"),
    ("long.csv", b"path,genus\na.jpg,Pica\nb.jpg,Pica,extra\n", "line 3 has more fields than the header"),
    ("bad.parquet", b"PAR1 not really", "unreadable Parquet"),
])
def test_bad_tables_are_one_line_naming_the_file(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(TreeclipError) as err:
        read_rows(tmp_path / name, what="catalog")
    assert str(err.value).startswith(str(tmp_path / name) + ":") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_taxon_from_row_cleans_and_takes_any_common_name_column():
    row = {"kingdom": "Metazoa", "phylum": "chordata", "class": "Aves", "order": "Passeriformes",
           "family": "Corvidae Vigors, 1825", "genus": "Pica", "species": "Pica hudsonia (Sabine, 1823)",
           "vernacular_name": "Black-billed Magpie"}
    assert taxon_from_row(row) == MAGPIE
    assert taxon_from_row({**row, "species": "Pica pica", "species_epithet": "hudsonia"}) == MAGPIE
    assert taxon_from_row({**row, "common": "magpie"}).common == "magpie"  # `common` comes first


def test_predict_reads_vernacular_names_too(tmp_path):
    """predict's taxa tables used to drop a `vernacular_name` column (its own copy of the
    common-name columns); the one definition gives the common name everywhere."""
    from treeclip.predict import labels

    (tmp_path / "taxa.csv").write_text(
        "kingdom,phylum,class,order,family,genus,species,vernacular_name\n"
        "Animalia,Chordata,Aves,Passeriformes,Corvidae,Pica,hudsonia,Black-billed Magpie\n", encoding="utf-8")
    assert labels.read_taxa_table(tmp_path / "taxa.csv") == [MAGPIE]
    assert labels.load_taxa(str(tmp_path / "taxa.csv"))[0].common == "Black-billed Magpie"
    assert read_taxa_table(tmp_path / "taxa.csv") == [MAGPIE]


def test_every_stage_scans_folders_for_the_same_image_files(tmp_path):
    """The builder's folder source, an evaluation task's folder and predict's folder scan
    take the same files (they had three lists of endings)."""
    from treeclip.data.sources import read_image_folder
    from treeclip.evaluate.task_sources import folder_rows
    from treeclip.predict.inputs import scan_folder

    cls = tmp_path / "imgs" / "Pica hudsonia"
    cls.mkdir(parents=True)
    for ext, fmt in ((".jpg", "JPEG"), (".JFIF", "JPEG"), (".png", "PNG"), (".ppm", "PPM"), (".webp", "WEBP"),
                     (".tif", "TIFF")):
        Image.new("RGB", (8, 8), (10, 200, 30)).save(cls / f"x{ext}", format=fmt)
    (cls / "notes.txt").write_text("not an image")
    (cls / "raw.cr2").write_bytes(b"a camera raw file: not an ending treeclip scans for")
    (cls / "IMG_1.heic").write_bytes(b"HEIC is scanned for: decoded with pillow-heif, else an error row")
    expected = {"x.jpg", "x.JFIF", "x.png", "x.ppm", "x.webp", "x.tif", "IMG_1.heic"}
    assert {p.name for p in scan_folder(tmp_path / "imgs")} == expected
    assert {it.source_id.rsplit("/", 1)[-1] for it in read_image_folder(tmp_path / "imgs")} == expected
    assert {r["path"].rsplit("/", 1)[-1] for r in folder_rows(tmp_path, "imgs", tmp_path / "task.toml")} == expected
