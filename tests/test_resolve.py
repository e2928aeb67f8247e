"""The catalog resolver: filling, keeping, conflicts, homonyms, bad rows and bad files."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from treeclip.errors import TreeclipError
from treeclip.taxonomy import RANKS
from treeclip.taxonomy.ncbi import NcbiReference, default_reference
from treeclip.taxonomy.resolve import problem_rows, read_catalog_table, resolve_table, write_catalog_table

MAGPIE = ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia")


@pytest.fixture(scope="module")
def ncbi() -> NcbiReference:
    return default_reference()


def _rows(out) -> list[dict]:
    frame = out.to_pandas() if isinstance(out, pa.Table) else out
    return frame.to_dict("records")


def _table(rows: list[dict]) -> pa.Table:
    columns = list(RANKS) + ["common"]
    return pa.table({c: [r.get(c, "") for r in rows] for c in columns})


def test_fill_keep_conflict_homonym_unknown(ncbi) -> None:
    table = _table([
        {"genus": "Pica", "species": "hudsonia"},                                    # 0 filled
        {"family": "Corvidae"},                                                      # 1 filled to family
        dict(zip(RANKS, MAGPIE), common="black-billed magpie"),                      # 2 resolved
        dict(zip(RANKS, MAGPIE[:3] + ("Suliformes",) + MAGPIE[4:])),                 # 3 conflict
        {"genus": "Morus"},                                                          # 4 ambiguous
        {"kingdom": "Plantae", "genus": "Morus"},                                    # 5 homonym settled
        {"class": "Aves", "genus": "Morus"},                                         # 6 the other one
        {"genus": "Xyzzy", "species": "plugh"},                                      # 7 unknown
        {},                                                                          # 8 no name
        {"species": "hudsonia"},                                                     # 9 epithet alone
        {"genus": "Pica", "species": "hudsonica"},                                   # 10 placed by genus
        {"genus": "Corvidae"},                                                       # 11 wrong rank
    ])
    out, summary = resolve_table(table, ncbi)
    rows = _rows(out)
    status = [r["status"] for r in rows]
    assert status == ["filled", "filled", "resolved", "conflict", "ambiguous", "filled", "filled",
                      "unknown", "unknown", "unknown", "filled", "unknown"]
    assert tuple(rows[0][r] for r in RANKS) == MAGPIE and rows[0]["common"] == "Black-billed magpie"
    assert tuple(rows[1][r] for r in RANKS) == MAGPIE[:5] + ("", "") and rows[1]["common"] == ""
    assert rows[2]["common"] == "black-billed magpie" and rows[2]["reason"] == ""  # the row's common wins
    assert rows[3]["order"] == "Suliformes"  # kept, reported
    assert rows[3]["reason"] == "order Suliformes but NCBI Passeriformes (row's names kept); filled common name"
    assert rows[4]["kingdom"] == "" and "give a higher rank" in rows[4]["reason"]
    assert rows[5]["family"] == "Moraceae" and rows[5]["common"] == "mulberries"
    assert rows[6]["family"] == "Sulidae" and rows[6]["kingdom"] == "Animalia"
    assert "not in the NCBI taxonomy" in rows[7]["reason"]
    assert rows[8]["reason"] == "no name in row"
    assert "without a genus" in rows[9]["reason"]
    assert rows[10]["species"] == "hudsonica" and rows[10]["family"] == "Corvidae"
    assert "did you mean Pica hudsonia?" in rows[10]["reason"] and "placed by Pica" in rows[10]["reason"]
    assert "is a family in NCBI, not a genus" in rows[11]["reason"]
    assert summary["rows"] == 12
    assert {k: summary[k] for k in ("resolved", "filled", "conflict", "ambiguous", "unknown")} == {
        "resolved": 1, "filled": 5, "conflict": 1, "ambiguous": 1, "unknown": 4}
    assert [i for i, _, _ in problem_rows(out)] == [3, 4, 7, 8, 9, 11]
    assert summary["placed_above_lowest_name"] == 1  # Pica hudsonica, placed by Pica


def test_overwrite_writes_ncbi_names(ncbi) -> None:
    table = _table([dict(zip(RANKS, MAGPIE[:3] + ("Suliformes",) + MAGPIE[4:])),
                    {"kingdom": "Plantae", "phylum": "Streptophyta", "genus": "Quercus", "species": "alba"}])
    kept, _ = resolve_table(table, ncbi)
    kept = _rows(kept)
    assert kept[1]["phylum"] == "Streptophyta" and kept[1]["status"] == "filled"  # NCBI's own name: no conflict
    out, summary = resolve_table(table, ncbi, overwrite=True)
    rows = _rows(out)
    assert rows[0]["order"] == "Passeriformes" and rows[0]["status"] == "conflict"
    assert "(NCBI's names written)" in rows[0]["reason"]
    assert rows[1]["phylum"] == "Tracheophyta" and summary["overwrite"] is True


def test_cleaning_and_other_name_columns(ncbi) -> None:
    frame = pd.DataFrame({
        "Kingdom": ["metazoa", "", "", "", ""],
        "Genus": ["corvus", "", "", "", "Pica"],
        "Species": ["Corvus corax Linnaeus, 1758", "", "", "", "hudsonia"],
        "family": ["", "", "", "", "123"],
        "scientific_name": ["", "Quercus alba L.", "Corvidae", "", ""],
        "taxonomic_name": ["", "", "", "Animalia Chordata Aves Passeriformes Corvidae Corvus corax", ""],
        "common_name": ["", "", "", "", "  magpie "],
        "n_images": [1, 2, 3, 4, 5],
    })
    out, summary = resolve_table(frame, ncbi)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["scientific_name", "taxonomic_name", "n_images", *RANKS, "common", "status", "reason"]
    rows = _rows(out)
    assert (rows[0]["kingdom"], rows[0]["genus"], rows[0]["species"]) == ("Animalia", "Corvus", "corax")
    assert rows[1]["family"] == "Fagaceae" and rows[1]["species"] == "alba" and rows[1]["common"] == "white oak"
    assert rows[2]["family"] == "Corvidae" and rows[2]["genus"] == ""  # a uninomial of unknown rank
    assert rows[3]["genus"] == "Corvus" and rows[3]["status"] == "filled"  # only the common name was new
    assert rows[4]["family"] == "Corvidae" and rows[4]["common"] == "magpie"
    assert rows[4]["reason"].startswith("family '123' is not a name")
    assert out["n_images"].tolist() == [1, 2, 3, 4, 5]
    assert summary["unknown"] == 0


def test_every_common_name_column_is_read(ncbi) -> None:
    for column in ("common_name", "vernacular_name", "vernacular"):
        out, _ = resolve_table(pd.DataFrame({"scientific_name": ["Pica hudsonia"], column: ["the magpie"]}), ncbi)
        assert _rows(out)[0]["common"] == "the magpie" and column not in out.columns


def test_each_distinct_name_resolved_once(ncbi, monkeypatch) -> None:
    calls: list[str] = []
    original = NcbiReference.lookup_one

    def counting(self, name, *args, **kwargs):
        calls.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(NcbiReference, "lookup_one", counting)
    table = _table([{"genus": "Pica", "species": "hudsonia"}] * 500 + [{"genus": "Corvus", "species": "corax"}] * 300)
    out, summary = resolve_table(table, ncbi)
    assert sorted(calls) == ["Corvus corax", "Pica hudsonia"]
    assert summary["distinct_names"] == 2 and summary["filled"] == 800
    assert out.num_rows == 800 and set(out.column("family").to_pylist()) == {"Corvidae"}


def test_arrow_types_and_empty_table(ncbi) -> None:
    table = pa.table({"genus": pa.array(["Pica", None]), "species": ["hudsonia", None],
                      "score": pa.array([0.5, 1.5], type=pa.float32())})
    out, _ = resolve_table(table, ncbi)
    assert out.schema.field("score").type == pa.float32() and out.schema.field("kingdom").type == pa.string()
    assert out.column("status").to_pylist() == ["filled", "unknown"]
    empty, summary = resolve_table(table.slice(0, 0), ncbi)
    assert empty.num_rows == 0 and summary["rows"] == 0 and "status" in empty.column_names


def test_missing_name_columns(ncbi) -> None:
    with pytest.raises(TreeclipError, match="no name columns.*found: path, label"):
        resolve_table(pa.table({"path": ["a.jpg"], "label": ["x"]}), ncbi)


# -- files --------------------------------------------------------------------------------
def test_read_csv_tsv_parquet_roundtrip(tmp_path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("\ufeffgenus,species,id\nPica,hudsonia,007\n\"Corvus\",\"corax, 1758\",8\n", encoding="utf-8")
    table = read_catalog_table(csv)
    assert table.column_names == ["genus", "species", "id"]
    assert table.column("id").to_pylist() == ["007", "8"]  # kept as text, zeros and all
    assert table.column("species").to_pylist() == ["hudsonia", "corax, 1758"]
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("genus\tspecies\nPica\thudsonia\n", encoding="utf-8")
    assert read_catalog_table(tsv).column("genus").to_pylist() == ["Pica"]
    semi = tmp_path / "rows.semi"  # the delimiter rule every table reader shares: `;` here
    semi.write_text("genus;species\nPica;hudsonia\n", encoding="utf-8")
    assert read_catalog_table(semi).column("species").to_pylist() == ["hudsonia"]
    for name in ("out.parquet", "out.csv"):
        write_catalog_table(table, tmp_path / name)
        assert read_catalog_table(tmp_path / name).to_pylist() == table.to_pylist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.parquet", "rows.csv", "rows.semi", "rows.tsv"]


def test_utf8_check_across_chunks(tmp_path) -> None:
    from treeclip.taxonomy.catalogs import _utf8_error

    path = tmp_path / "rows.csv"
    path.write_bytes(b"genus,species\n" + b"Pica,hudsonia\n" * 10 + "Pic\u00e9,".encode() + b"\xe9\n")
    for chunk in (1, 3, 7, 1 << 20):  # a multi-byte character split across chunks is fine
        assert _utf8_error(path, chunk_size=chunk) == "line 12, byte 0xe9"
    path.write_bytes("genus\n".encode() + "\u00e9".encode() * 9)
    assert _utf8_error(path, chunk_size=3) is None
    path.write_bytes(b"genus\nPica\xc3")  # truncated at the end
    assert _utf8_error(path, chunk_size=4) == "line 2, byte 0xc3"


def test_quoted_newline_in_csv(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('genus,species,note\nPica,hudsonia,"two\nlines"\n', encoding="utf-8")
    assert read_catalog_table(path).column("note").to_pylist() == ["two\nlines"]


@pytest.mark.parametrize("content, message", [
    (b"genus,species\nPica,hudsonia\nCorvus,corax,extra\n", "malformed CSV: CSV parse error: Expected 2 columns, got 3"),
    (b"genus,species\nPica,hudsonia\nCorvus,cor\xe9ax\n", r"not UTF-8 text \(line 3, byte 0xe9\)"),
    (b"", "empty file"),
    (b"genus,genus\nPica,Pica\n", "repeated column 'genus'"),
])
def test_bad_csv_one_line_error(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(TreeclipError, match=message) as info:
        read_catalog_table(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_bad_parquet_and_missing_file(tmp_path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(TreeclipError, match="not a readable Parquet file"):
        read_catalog_table(bad)
    with pytest.raises(TreeclipError, match="no such file"):
        read_catalog_table(tmp_path / "nope.csv")


def test_write_is_atomic(tmp_path, monkeypatch) -> None:
    table = pa.table({"genus": ["Pica"]})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_catalog_table(table, tmp_path / "out.parquet")
    assert list(tmp_path.iterdir()) == []  # nothing partial left
    with pytest.raises(TreeclipError, match="unknown output format"):
        write_catalog_table(table, tmp_path / "out.xlsx")
