"""Paths that come from catalogs (sources, evaluation tasks, a dataset's own catalog),
joined to their root so that none can reach outside it."""

from __future__ import annotations

import os
from pathlib import Path

from treeclip.errors import InputError


def safe_join(root: str | os.PathLike, rel: str, *, what: str = "", follow_links: bool = True) -> Path:
    """`root/rel`, refused with InputError when it escapes `root`; absolute paths are
    allowed only inside `root`. `..` is always resolved first. With `follow_links` (the
    builder) symlinks are resolved too, so a link out of `root` is refused; without it
    (evaluation tasks, whose folders often link to the user's image store) a link inside
    `root` is trusted as the user's own, and the path is returned unresolved."""
    label = what or rel
    if not rel or "\x00" in rel:
        raise InputError(f"{label}: empty or invalid path")
    resolve = os.path.realpath if follow_links else os.path.abspath
    root_real = Path(resolve(root))
    candidate = Path(resolve(Path(root) / rel))  # an absolute rel replaces root here
    if candidate != root_real and root_real not in candidate.parents:
        raise InputError(f"{label}: path escapes the image root {root} (refused)")
    return candidate
