"""The one cache root. Every cache treeclip keeps (label embeddings, exported ONNX
graphs, evaluation features, the NCBI name index) lives in a folder of its kind
under it, and every cache key includes that cache's own format version, so a format
change never reads an old entry.

Root: `$TREECLIP_CACHE`, else `$XDG_CACHE_HOME/treeclip`, else `~/.cache/treeclip`.
"""

from __future__ import annotations

import os
from pathlib import Path

KINDS = ("labels", "onnx", "features", "ncbi")


def cache_root() -> Path:
    """`$TREECLIP_CACHE`, else `$XDG_CACHE_HOME/treeclip`, else `~/.cache/treeclip`."""
    base = os.environ.get("TREECLIP_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "treeclip"


def cache_dir(kind: str, override: str | os.PathLike | None = None) -> Path:
    """The folder of one kind of cache: `override` when given, else `cache_root()/kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; expected one of {', '.join(KINDS)}")
    return Path(override) if override else cache_root() / kind
