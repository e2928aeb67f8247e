"""`treeclip taxonomy lookup` and `treeclip taxonomy resolve` through click's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from treeclip.cli import cli

ROWS = (
    "id,genus,species,family,common_name\n"
    "1,Pica,hudsonia,,\n"
    "2,Morus,,,\n"
    "3,Quercus,alba,Fagaceae,\n"
    "4,Xyzzy,plugh,,\n"
)


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_lookup_prints_lineage_common_and_every_text_type() -> None:
    result = _run("taxonomy", "lookup", "Pica hudsonia")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Pica hudsonia  (NCBI taxid 158052, species)" in out
    for line in ("kingdom  Animalia", "phylum   Chordata", "class    Aves", "order    Passeriformes",
                 "family   Corvidae", "genus    Pica", "species  hudsonia", "common   Black-billed magpie"):
        assert f"  {line}\n" in out
    assert "    com           a photo of Black-billed magpie.\n" in out
    assert ("    taxon_com     a photo of Animalia Chordata Aves Passeriformes Corvidae Pica hudsonia "
            "with common name Black-billed magpie.\n") in out
    assert out.count("a photo of") == 7


def test_lookup_json() -> None:
    result = _run("taxonomy", "lookup", "--json", "Amanita muscaria", "Apis mellifera")
    assert result.exit_code == 0
    fungus, bee = (json.loads(line) for line in result.output.splitlines())
    assert fungus["status"] == "resolved" and fungus["matches"][0]["ranks"]["kingdom"] == "Fungi"
    assert fungus["matches"][0]["captions"]["com"] == "a photo of fly agaric."
    assert bee["matches"][0]["names"]["scientific"] == "Apis mellifera"


def test_lookup_homonym_and_context() -> None:
    result = CliRunner().invoke(cli, ["taxonomy", "lookup", "Morus"])
    assert result.exit_code == 1  # ambiguous: both candidates shown, a reason on stderr
    assert "Moraceae" in result.output and "Sulidae" in result.output and "give a higher rank" in result.output
    picked = _run("taxonomy", "lookup", "Morus", "-c", "class=Aves", "--json")
    assert picked.exit_code == 0 and json.loads(picked.output)["matches"][0]["ranks"]["family"] == "Sulidae"
    bad = CliRunner().invoke(cli, ["taxonomy", "lookup", "Morus", "-c", "tribe=Moreae"])
    assert bad.exit_code == 2 and "expected RANK=NAME" in bad.output


def test_lookup_unknown_and_empty() -> None:
    result = CliRunner().invoke(cli, ["taxonomy", "lookup", "Pica hudsonica", ""])
    assert result.exit_code == 1
    assert "unknown: 'Pica hudsonica' is not in the NCBI taxonomy (did you mean Pica hudsonia?)" in result.output
    assert "unknown: empty name" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("out_name", ["resolved.parquet", "resolved.csv"])
def test_resolve_csv(tmp_path, out_name: str) -> None:
    src = tmp_path / "rows.csv"
    src.write_text(ROWS, encoding="utf-8")
    out = tmp_path / out_name
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(cli, ["taxonomy", "resolve", str(src), "-o", str(out), "--summary-json", str(summary)])
    assert result.exit_code == 1, result.output  # one ambiguous and one unknown row
    assert "4 rows, 4 distinct names" in result.output
    for line in ("resolved   0", "filled     2", "conflict   0", "ambiguous  1", "unknown    1"):
        assert f"  {line}\n" in result.output
    assert f"{src}: row 2: ambiguous:" in result.output and f"{src}: row 4: unknown:" in result.output
    from treeclip.taxonomy.resolve import read_catalog_table

    rows = read_catalog_table(out).to_pylist()
    assert [r["status"] for r in rows] == ["filled", "ambiguous", "filled", "unknown"]
    assert rows[0]["kingdom"] == "Animalia" and rows[0]["common"] == "Black-billed magpie"
    assert rows[2]["class"] == "Magnoliopsida" and rows[0]["id"] == "1"
    assert json.loads(summary.read_text())["filled"] == 2


def test_resolve_parquet_in_clean_run(tmp_path) -> None:
    import pyarrow as pa

    src = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"scientific_name": ["Corvus corax Linnaeus, 1758", "Poa annua"]}), src)
    result = _run("taxonomy", "resolve", str(src), "-o", str(tmp_path / "out.parquet"))
    assert result.exit_code == 0
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("class").to_pylist() == ["Aves", "Liliopsida"]


@pytest.mark.parametrize("content, message", [
    (b"genus,species\nPica,hudsonia\nCorvus,corax,x\n", "malformed CSV"),
    (b"genus,species\nCorvus,cor\xe9ax\n", "not UTF-8 text (line 2, byte 0xe9)"),
    (b"path,label\na.jpg,magpie\n", "no name columns"),
    (b"", "empty file"),
])
def test_resolve_bad_input_one_line_nothing_written(tmp_path, content: bytes, message: str) -> None:
    src = tmp_path / "bad.csv"
    src.write_bytes(content)
    result = CliRunner().invoke(cli, ["taxonomy", "resolve", str(src), "-o", str(tmp_path / "out.parquet")])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(src) in lines[0] and message in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_resolve_bad_output_format(tmp_path) -> None:
    src = tmp_path / "rows.csv"
    src.write_text(ROWS, encoding="utf-8")
    result = CliRunner().invoke(cli, ["taxonomy", "resolve", str(src), "-o", str(tmp_path / "out.xlsx")])
    assert result.exit_code == 2 and "unknown output format" in result.output


def test_taxonomy_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom treeclip.cli import cli\n"
            "try:\n    cli.main(['taxonomy', '--help'], prog_name='treeclip')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'taxoniq' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "lookup" in proc.stdout and "resolve" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "False False"
