"""A human-readable summary of a dataset dir (`treeclip data info`)."""

from __future__ import annotations

import os

from treeclip.data.dataset import read_manifest, read_taxa, shard_paths
from treeclip.taxonomy.taxon import RANKS


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def dataset_summary(dataset_dir: str | os.PathLike, *, examples: int = 1) -> str:
    """Samples per split, taxa per rank, shards and sizes, and example captions."""
    import tarfile

    m = read_manifest(dataset_dir)
    taxa = read_taxa(dataset_dir)
    lines = [f"dataset: {dataset_dir}", f"samples: {m['n_samples']}  ("
             + ", ".join(f"{s}: {v['n_samples']}" for s, v in m["splits"].items()) + ")"]
    lines.append(f"classes: {len(taxa)}")
    lines.append("taxa per rank: " + ", ".join(f"{r} {m['taxa_per_rank'].get(r, 0)}" for r in RANKS))
    for split, v in m["splits"].items():
        total = sum(s["bytes"] for s in v["shards"])
        lines.append(f"shards {split}: {len(v['shards'])} ({_size(total)})")
    counts = m.get("build", {}).get("counts")
    if counts:
        lines.append("build: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if examples:
        paths = shard_paths(dataset_dir, "train") or shard_paths(dataset_dir, "val")
        shown: dict[str, list[str]] = {t: [] for t in m["text_types"]}
        if paths:
            with tarfile.open(paths[0]) as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    t = ext[:-4] if ext.endswith(".txt") else None
                    if t in shown and len(shown[t]) < examples:
                        shown[t].append(tar.extractfile(member).read().decode("utf-8"))
                    if all(len(v) >= examples for v in shown.values()):
                        break
        lines.append("text types:")
        lines += [f"  {t:<13} {c}" for t, cs in shown.items() for c in cs]
    return "\n".join(lines)
