"""`hf-hub:ORG/NAME` specs resolved offline, from files already on this machine.

Nothing here goes online: files are found with `huggingface_hub`'s own offline cache
lookup (`try_to_load_from_cache`). A spec names a Hugging Face repo whose files were
copied here, in the Hugging Face cache layout:

    HUB/models--ORG--NAME/refs/main              the revision, e.g. 2957b32...
    HUB/models--ORG--NAME/snapshots/<rev>/...    the files (often links into ../../blobs/)
    HUB/datasets--ORG--NAME/...                  the same for a dataset repo

HUB is looked for in this order: the hub folder of the caller's `CachePaths` (`--hub-dir`,
else `$TREECLIP_HF_HUB`: a hub folder copied from another machine), then Hugging Face's own
cache (`huggingface_hub.constants.HF_HUB_CACHE`: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
`~/.cache/huggingface/hub`). Without `refs/main`, a repo with a single snapshot uses it.

A folder written by `huggingface-cli download ORG/NAME --local-dir DIR` needs no spec:
give DIR itself (it is a model dir, or a label-set folder).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from treeclip.cache import HUB_ENV
from treeclip.errors import TreeclipError

HUB_PREFIX = "hf-hub:"

PUBLISHED_LABEL_SETS = {
    "imageomics/bioclip": "imageomics/TreeOfLife-10M",
    "imageomics/bioclip-2": "imageomics/TreeOfLife-200M",
}
"""The tree-of-life label set (a dataset repo) published for each BioCLIP model, as
pybioclip pairs them; its files are `embeddings/txt_emb_species.{npy,json}`, or a set
named for the model beside them (`txt_emb_<model>.*`, `runtime.labelsets`)."""

LABEL_SET_FOLDER = "embeddings"
"""Where a published dataset repo keeps its label set."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_spec(spec: object) -> bool:
    """Whether `spec` is an `hf-hub:ORG/NAME` string."""
    return isinstance(spec, str) and spec.startswith(HUB_PREFIX)


def repo_id(spec: str) -> str:
    """`ORG/NAME` of `hf-hub:ORG/NAME` (or of a bare `ORG/NAME`), checked: one slash, no
    `..`, so a spec never names a path outside the hub folder."""
    rid = spec[len(HUB_PREFIX):] if is_hub_spec(spec) else spec
    if not _REPO_ID.match(rid) or ".." in rid:
        raise TreeclipError(f"{spec}: not a Hugging Face repo id (expected hf-hub:ORG/NAME)")
    return rid


def hub_roots(hub: str | Path | None = None) -> list[Path]:
    """The hub folders searched, in order: `hub` (the caller's `CachePaths.hub`), then
    Hugging Face's cache."""
    from huggingface_hub import constants

    roots = [Path(hub).expanduser()] if hub else []
    roots.append(Path(constants.HF_HUB_CACHE).expanduser())
    return list(dict.fromkeys(roots))


def repo_folder(rid: str, kind: str = "model") -> str:
    """The cache folder name of a repo: `models--ORG--NAME` or `datasets--ORG--NAME`."""
    if kind not in ("model", "dataset"):
        raise ValueError(f"unknown repo kind {kind!r}")
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=rid, repo_type=kind)


def _revision(repo: Path) -> tuple[str | None, str]:
    """The revision `refs/main` names (or without refs the only snapshot), and what was
    looked at when there is none. A revision is a plain name, never a path."""
    if not repo.is_dir():
        return None, f"{repo} (absent)"
    ref = repo / "refs" / "main"
    try:
        rev = ref.read_text(encoding="utf-8").strip()
    except OSError:
        snaps = sorted(p.name for p in (repo / "snapshots").glob("*") if p.is_dir())
        if len(snaps) == 1:
            return snaps[0], str(repo / "snapshots" / snaps[0])
        what = "no refs/main" + (f", {len(snaps)} snapshots" if snaps else "")
        return None, f"{repo} ({what})"
    if not re.fullmatch(r"[0-9A-Za-z._-]+", rev) or ".." in rev:
        return None, f"{ref} (not a revision)"
    return rev, str(repo / "snapshots" / rev)


def _cached_file(root: Path, rid: str, kind: str, revision: str, filename: str) -> Path | None:
    """`filename` of the repo's `revision` (a commit name: `_revision` resolved `refs/main`)
    in the hub folder `root`, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(rid, filename, cache_dir=str(root), revision=revision, repo_type=kind)
    except (OSError, ValueError):  # a damaged ref, or a revision that is not one
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def find_snapshot(spec: str, kind: str, need: Sequence[Sequence[str]], *, what: str,
                  hub: str | Path | None = None) -> Path:
    """The snapshot folder of `spec`'s repo that holds, for each group in `need`, one of
    its files (relative paths); `hub` is searched first (see `hub_roots`). Raises one line
    naming `what` and every place looked."""
    rid = repo_id(spec)
    looked = []
    for root in hub_roots(hub):
        revision, place = _revision(root / repo_folder(rid, kind))
        if revision is None:
            looked.append(place)
            continue
        found = [next(((f, p) for f in group if (p := _cached_file(root, rid, kind, revision, f))), None)
                 for group in need]
        if all(found):
            name, path = found[0]  # type: ignore[misc]
            return path.parents[len(Path(name).parts) - 1]  # the snapshot folder the file is in
        missing = [" or ".join(group) for group, path in zip(need, found) if path is None]
        looked.append(f"{place} (no {'; no '.join(missing)})")
    raise TreeclipError(f"{HUB_PREFIX}{rid}: {what} not found offline; looked in {', '.join(looked)}. "
                        f"Copy the repo into a Hugging Face cache there, point --hub-dir (or {HUB_ENV}) at "
                        "a copied hub folder, or give a --local-dir download folder instead "
                        "(docs/predict.md#offline)")


def published_label_set(model_spec: str) -> str | None:
    """`hf-hub:ORG/NAME` of the label set published for a published model spec, or None."""
    if not is_hub_spec(model_spec):
        return None
    published = {model.lower(): dataset for model, dataset in PUBLISHED_LABEL_SETS.items()}
    dataset = published.get(repo_id(model_spec).lower())  # the hub's repo ids ignore case
    return HUB_PREFIX + dataset if dataset else None
