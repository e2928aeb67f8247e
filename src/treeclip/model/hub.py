"""`hf-hub:ORG/NAME` specs resolved offline, from files already on this machine.

Nothing here goes online or imports `huggingface_hub`. A spec names a Hugging Face repo
whose files were copied here, in the Hugging Face cache layout:

    HUB/models--ORG--NAME/refs/main              the revision, e.g. 2957b32...
    HUB/models--ORG--NAME/snapshots/<rev>/...    the files (often links into ../../blobs/)
    HUB/datasets--ORG--NAME/...                  the same for a dataset repo

HUB is looked for in this order (all that are set are tried):
`$TREECLIP_HF_HUB` (treeclip's own: a hub folder copied from another machine; the CLI's
`--hub-dir` sets it), then Hugging Face's own cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
else `~/.cache/huggingface/hub`. Without `refs/main`, a repo with a single snapshot uses it.

A folder written by `huggingface-cli download ORG/NAME --local-dir DIR` needs no spec:
give DIR itself (it is a model dir, or a label-set folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from treeclip.errors import TreeclipError

HUB_PREFIX = "hf-hub:"
HUB_ENV = "TREECLIP_HF_HUB"
"""Environment variable naming a hub folder to search before Hugging Face's own cache."""

PUBLISHED_LABEL_SETS = {
    "imageomics/bioclip": "imageomics/TreeOfLife-10M",
    "imageomics/bioclip-2": "imageomics/TreeOfLife-200M",
}
"""The tree-of-life label set (a dataset repo) published for each BioCLIP model, as
pybioclip pairs them; its files are `embeddings/txt_emb_species.{npy,json}`."""

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


def hub_roots() -> list[Path]:
    """The hub folders searched, in order: `$TREECLIP_HF_HUB`, then Hugging Face's cache."""
    roots = []
    if os.environ.get(HUB_ENV):
        roots.append(Path(os.environ[HUB_ENV]).expanduser())
    if os.environ.get("HF_HUB_CACHE"):
        roots.append(Path(os.environ["HF_HUB_CACHE"]).expanduser())
    elif os.environ.get("HF_HOME"):
        roots.append(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    else:
        roots.append(Path.home() / ".cache" / "huggingface" / "hub")
    return list(dict.fromkeys(roots))


def repo_folder(rid: str, kind: str = "model") -> str:
    """The cache folder name of a repo: `models--ORG--NAME` or `datasets--ORG--NAME`."""
    if kind not in ("model", "dataset"):
        raise ValueError(f"unknown repo kind {kind!r}")
    return f"{kind}s--" + rid.replace("/", "--")


def _snapshot(repo: Path) -> tuple[Path | None, str]:
    """The snapshot `refs/main` names (or the only one), and what was looked at."""
    if not repo.is_dir():
        return None, f"{repo} (absent)"
    ref = repo / "refs" / "main"
    try:
        rev = ref.read_text(encoding="utf-8").strip()
    except OSError:
        snaps = sorted(p for p in (repo / "snapshots").glob("*") if p.is_dir())
        if len(snaps) == 1:
            return snaps[0], str(snaps[0])
        what = "no refs/main" + (f", {len(snaps)} snapshots" if snaps else "")
        return None, f"{repo} ({what})"
    if not re.fullmatch(r"[0-9A-Za-z._-]+", rev) or ".." in rev:
        return None, f"{ref} (not a revision)"
    return repo / "snapshots" / rev, str(repo / "snapshots" / rev)


def find_snapshot(spec: str, kind: str, need: Sequence[Sequence[str]], *, what: str) -> Path:
    """The snapshot folder of `spec`'s repo that holds, for each group in `need`, one of
    its files (relative paths). Raises one line naming `what` and every place looked."""
    rid = repo_id(spec)
    looked = []
    for root in hub_roots():
        snap, place = _snapshot(root / repo_folder(rid, kind))
        if snap is None:
            looked.append(place)
            continue
        missing = [" or ".join(group) for group in need if not any((snap / f).is_file() for f in group)]
        if not missing:
            return snap
        looked.append(f"{place} (no {'; no '.join(missing)})")
    raise TreeclipError(f"{HUB_PREFIX}{rid}: {what} not found offline; looked in {', '.join(looked)}. "
                        f"Copy the repo into a Hugging Face cache there, point {HUB_ENV} (--hub-dir) at "
                        "a copied hub folder, or give a --local-dir download folder instead "
                        "(docs/predict.md#offline)")


def published_label_set(model_spec: str) -> str | None:
    """`hf-hub:ORG/NAME` of the label set published for a published model spec, or None."""
    if not is_hub_spec(model_spec):
        return None
    published = {model.lower(): dataset for model, dataset in PUBLISHED_LABEL_SETS.items()}
    dataset = published.get(repo_id(model_spec).lower())  # the hub's repo ids ignore case
    return HUB_PREFIX + dataset if dataset else None
