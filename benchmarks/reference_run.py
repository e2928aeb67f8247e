"""Fixed-settings train + eval reference: one fingerprint of every number a refactor must keep.

Runs `treeclip demo --quick` (synthetic tree, CLIP and classifier training, evaluation,
predict) into a fresh folder and prints a digest of each trained model's weights and of every
metric in its results, so two commits can be compared: a refactor meant to change nothing must
print the same lines.

    python benchmarks/reference_run.py [--out DIR] > before.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def numbers(value: object, prefix: str = "") -> list[str]:
    """Every number in a JSON value, as `key.path=value` lines (sorted keys)."""
    if isinstance(value, dict):
        return [line for key in sorted(value) for line in numbers(value[key], f"{prefix}{key}.")]
    if isinstance(value, list):
        return [line for i, item in enumerate(value) for line in numbers(item, f"{prefix}{i}.")]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [f"{prefix.rstrip('.')}={value!r}"]
    return []


def fingerprint(out: Path) -> list[str]:
    lines = []
    for weights in sorted(out.rglob("*.safetensors")):
        lines.append(f"weights {weights.relative_to(out)} {digest(weights)}")
    for results in sorted(out.rglob("results.json")):
        data = json.loads(results.read_text())
        lines += [f"{results.relative_to(out)} {line}" for line in numbers(data)]
    for table in sorted(out.rglob("*.csv")):
        lines.append(f"csv {table.relative_to(out)} {digest(table)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="treeclip-reference-"))
    subprocess.run([sys.executable, "-m", "treeclip", "demo", "--quick", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    print("\n".join(fingerprint(out)))


if __name__ == "__main__":
    main()
