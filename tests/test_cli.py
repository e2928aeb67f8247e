"""The command line: every verb answers --help without importing heavy libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

from treeclip.cli import VERBS, cli
from treeclip.commands import data as data_cmd
from treeclip.commands import taxonomy as taxonomy_cmd

HEAVY = ("torch", "open_clip", "numpy", "pyarrow", "PIL", "webdataset", "taxoniq", "pandas", "sklearn")


def _help_imports(argv: list[str]) -> tuple[int, str, list[str]]:
    code = (
        "import sys\n"
        "from treeclip.cli import cli\n"
        f"try:\n    cli.main({argv!r}, prog_name='treeclip')\n"
        "except SystemExit as e:\n    code = e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
        "sys.exit(code or 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    heavy_line = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY=")]
    heavy = heavy_line[-1][6:].split(",") if heavy_line and heavy_line[-1][6:] else []
    return proc.returncode, proc.stdout, heavy


def _all_help_argvs() -> list[list[str]]:
    argvs = [["--help"]]
    for verb in VERBS:
        argvs.append([verb, "--help"])
    for group, verbs in (("taxonomy", taxonomy_cmd.VERBS), ("data", data_cmd.VERBS)):
        argvs += [[group, sub, "--help"] for sub in verbs]
    return argvs


@pytest.mark.parametrize("argv", _all_help_argvs(), ids=lambda a: " ".join(a))
def test_help_is_light(argv: list[str]) -> None:
    group = cli
    for name in argv[:-1]:
        group = group.get_command(None, name) if hasattr(group, "get_command") else None
        if group is None:
            pytest.fail(f"verb {' '.join(argv[:-1])} is listed but its module is missing")
    code, out, heavy = _help_imports(argv)
    assert code == 0, out
    assert "Usage:" in out
    assert heavy == [], f"`treeclip {' '.join(argv)}` imported {heavy}"


def test_unknown_verb_is_a_usage_error() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["no-such-verb"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_python_dash_m_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "treeclip", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "0.1.0" in proc.stdout
