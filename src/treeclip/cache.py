"""Where treeclip keeps what it can compute again, and where it looks for copied Hugging
Face repos: one `CachePaths`, made once (by the CLI or the caller) and passed whole.

Every cache (label embeddings, exported ONNX graphs, evaluation features, the NCBI name
index) lives in a folder of its kind under one root, and every cache key includes that
cache's own format version, so a format change never reads an old entry.

Root: the one given (`--cache`), else `$TREECLIP_CACHE`, else `$XDG_CACHE_HOME/treeclip`,
else `~/.cache/treeclip`. Hub: the folder given (`--hub-dir`), else `$TREECLIP_HF_HUB`;
it is searched for `hf-hub:ORG/NAME` before Hugging Face's own cache (`treeclip.model.hub`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KINDS = ("labels", "onnx", "features", "ncbi")
HUB_ENV = "TREECLIP_HF_HUB"
"""Environment variable naming a hub folder to search before Hugging Face's own cache."""


def cache_root() -> Path:
    """`$TREECLIP_CACHE`, else `$XDG_CACHE_HOME/treeclip`, else `~/.cache/treeclip`."""
    base = os.environ.get("TREECLIP_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "treeclip"


@dataclass(frozen=True)
class CachePaths:
    """The cache root (a folder per kind under it) and the hub folder searched first."""

    root: Path
    hub: Path | None = None

    @classmethod
    def default(cls, root: str | os.PathLike | None = None, hub: str | os.PathLike | None = None) -> "CachePaths":
        """`root`/`hub` when given, else what the environment names (see the module doc)."""
        hub = hub or os.environ.get(HUB_ENV) or None
        return cls(Path(root).expanduser() if root else cache_root(), Path(hub).expanduser() if hub else None)

    def folder(self, kind: str) -> Path:
        """The folder of one kind of cache."""
        if kind not in KINDS:
            raise ValueError(f"unknown cache kind {kind!r}; expected one of {', '.join(KINDS)}")
        return self.root / kind

    @property
    def labels(self) -> Path:
        return self.folder("labels")

    @property
    def onnx(self) -> Path:
        return self.folder("onnx")

    @property
    def features(self) -> Path:
        return self.folder("features")

    @property
    def ncbi(self) -> Path:
        return self.folder("ncbi")


def caches_or_default(caches: CachePaths | None) -> CachePaths:
    """`caches`, or the environment's when None (library calls without a CLI)."""
    return caches if caches is not None else CachePaths.default()
