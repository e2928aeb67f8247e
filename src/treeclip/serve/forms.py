"""Reading the server's multipart forms: the uploads, the ids and the options of /predict.

Every check raises `UploadError(status, one-line reason)`; the app turns it into the 4xx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from treeclip.errors import TreeclipError
from treeclip.serve.limits import UploadError, UploadLimits
from treeclip.taxonomy.taxon import RANKS

MAX_K = 100


async def read_form(request: Request, limits: UploadLimits) -> FormData:
    """The request's multipart form, with the caps on files and part sizes applied."""
    try:
        return await request.form(max_files=limits.max_files, max_fields=limits.max_files + 64,
                                  max_part_size=1024 * 1024)
    except StarletteHTTPException as err:
        detail = str(err.detail)
        if "Too many files" in detail:
            raise UploadError(413, f"too many files: at most {limits.max_files} per request") from None
        raise UploadError(400, f"bad multipart form: {detail}") from None
    except UploadError:
        raise
    except Exception as err:  # malformed bodies surface as parser errors
        raise UploadError(400, f"bad multipart form: {err}") from None


def predict_images(form: FormData, limits: UploadLimits) -> tuple[list[UploadFile], list[str]]:
    """The /predict form's uploads and `ids` of earlier uploads (one field may hold several,
    comma or space separated); refused when there are none or more than the cap."""
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    ids = [i for v in form.getlist("ids") if isinstance(v, str) for i in v.replace(",", " ").split()]
    if not files and not ids:
        raise UploadError(400, "no images: send one or more 'files' (or 'ids' of earlier uploads)")
    if len(files) + len(ids) > limits.max_files:
        raise UploadError(413, f"too many images: {len(files) + len(ids)} > {limits.max_files} per request")
    return files, ids


def embed_images(form: FormData) -> list[UploadFile]:
    """The /embed form's uploads (a plain text field named `files` is not one)."""
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not files:
        raise UploadError(400, "no images: send one or more 'files'")
    return files


@dataclass(frozen=True)
class PredictRequest:
    """What a /predict request asks for: the top `k` at `rank` among the label taxa (kept
    by `subset`) or the client's own `labels`, and with `threshold` the roll-up answer."""

    rank: str = "species"
    k: int = 5
    threshold: float | None = None
    subset: str | None = None
    labels: tuple[str, ...] | None = None
    head: bool = False  # classify with the server's fitted head (`serve --head`)


def predict_options(form: FormData, limits: UploadLimits) -> PredictRequest:
    """Validated classification options from the form; `UploadError(400)` names the field."""
    rank = (form.get("rank") or "species").strip().lower()
    if rank not in RANKS:
        raise UploadError(400, f"unknown rank {rank!r}; expected one of {', '.join(RANKS)}")
    k = _number(form.get("k"), "k", int, 5)
    if not 1 <= k <= MAX_K:
        raise UploadError(400, f"k must be between 1 and {MAX_K}, got {k}")
    threshold = _number(form.get("threshold"), "threshold", float, None)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UploadError(400, f"threshold must be between 0 and 1, got {threshold}")
    subset = (form.get("subset") or "").strip() or None
    try:
        labels = check_labels(str(form.get("labels") or "").splitlines(), limits)
    except TreeclipError as err:
        raise UploadError(413, str(err)) from None
    head = str(form.get("head") or "").strip().lower() in ("1", "true", "on", "yes")
    return PredictRequest(rank, k, threshold, subset, tuple(labels) if labels else None, head)


def check_labels(labels: Sequence[str], limits: UploadLimits) -> list[str]:
    """Clean custom labels (stripped, blank and repeated ones dropped); raises
    `TreeclipError` when there are more than the cap, or more text than the cap."""
    seen: dict[str, None] = {}
    for label in labels:
        label = " ".join(label.split())
        if label:
            seen.setdefault(label, None)
    if len(seen) > limits.max_labels:
        raise TreeclipError(f"too many custom labels: {len(seen)} > {limits.max_labels}")
    chars = sum(len(label) for label in seen)
    if chars > limits.max_label_chars:
        raise TreeclipError(f"custom labels too long: {chars:,} characters > {limits.max_label_chars:,}")
    return list(seen)


def _number(value: Any, field: str, kind: type, default: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UploadError(400, f"{field} must be a {'whole number' if kind is int else 'number'}, got {value!r}") from None
