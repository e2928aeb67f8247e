"""The HTTP API and web page of `treeclip serve`: a FastAPI app over a `ServeEngine`.

Endpoints (OpenAPI schema at /openapi.json):
- `GET /` the single-page web app (static/index.html, no build step, no CDN);
- `POST /predict` multipart: `files` (one or many images) and/or `ids` (uploads the
  server has already embedded), `rank`, `k`, `subset`, `labels` (one per line), `threshold`
  (roll-up); returns one entry per image with prediction rows shaped like the CLI's JSON Lines;
- `POST /embed` multipart `files`: the image embeddings;
- `GET /taxa?q=` search the label set by scientific or common name;
- `GET /health` model, label set size, caps and batching counters.

Bad uploads get a 4xx whose `detail` is one line naming the file and the reason; when some
images of a request are good, the request succeeds and the bad ones carry an `error`
(like the CLI's error rows). The server keeps serving either way.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from treeclip.errors import InputError, TreeclipError
from treeclip.runtime.precision import VERB_DEFAULTS, cpu_features
from treeclip.serve.batcher import MicroBatcher
from treeclip.serve.engine import Embedded, ServeEngine, check_labels, upload_id
from treeclip.serve.limits import UploadError, UploadLimits, check_file_size, status_for
from treeclip.taxonomy.taxon import RANKS

MAX_K = 100


class _BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes`, from Content-Length when
    the client sends one and by counting while the body streams in otherwise."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        reason = f"request too large: more than {self.max_bytes:,} bytes"
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response = JSONResponse({"detail": reason}, status_code=413, headers={"Connection": "close"})
                return await response(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadError(413, reason)
            return message

        return await self.app(scope, counted, send)


def _multipart_doc(properties: dict) -> dict:
    """OpenAPI for an endpoint that parses its own multipart form (to enforce the caps)."""
    schema = {"type": "object", "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_FILES = {"type": "array", "items": {"type": "string", "format": "binary"},
          "description": "images (JPEG, PNG, WebP, TIFF, ...)"}
_PREDICT_DOC = _multipart_doc({
    "files": _FILES,
    "ids": {"type": "array", "items": {"type": "string"},
            "description": "ids of images uploaded before (reuses their embeddings; 404 when forgotten)"},
    "rank": {"type": "string", "enum": list(RANKS), "default": "species"},
    "k": {"type": "integer", "default": 5, "minimum": 1, "maximum": MAX_K},
    "subset": {"type": "string", "description": "only taxa within this taxon: a name (Aves) or RANK=NAME[,NAME]"},
    "labels": {"type": "string", "description": "custom labels, one per line (replaces the tree of life)"},
    "threshold": {"type": "number", "minimum": 0, "maximum": 1,
                  "description": "roll-up: also report the deepest rank whose score reaches this"},
})
_EMBED_DOC = _multipart_doc({"files": _FILES})


def create_app(model: str | Path | Any | ServeEngine, *, taxa: Any = None, limits: UploadLimits | None = None,
               device: str = "cpu", precision: str = VERB_DEFAULTS["serve"],
               embed_precision: str = VERB_DEFAULTS["serve-embed"], max_batch: int = 32, max_wait_ms: float = 5.0,
               cache_size: int = 4096, label_cache_dir: str | Path | None = None,
               templates: str | Sequence[str] = "openai") -> FastAPI:
    """The FastAPI app for `model` (a model dir or spec `load_model` accepts, a `ClipModel`,
    or a ready `ServeEngine`). The model and label embeddings load here, once; serve the
    app with uvicorn (`treeclip serve` does)."""
    if isinstance(model, ServeEngine):
        engine = model
    else:
        engine = ServeEngine(model, taxa=taxa, device=device, precision=precision, embed_precision=embed_precision,
                             limits=limits,
                             cache_size=cache_size, label_cache_dir=label_cache_dir, templates=templates)
    limits = engine.limits
    batcher = MicroBatcher(engine.encode_batch, max_batch=max_batch, max_wait_s=max_wait_ms / 1000)
    page = resources.files("treeclip.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    # /docs and /redoc would load their scripts from a CDN; the page must work offline
    app = FastAPI(title="treeclip", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Classify and embed organism photos with a treeclip (BioCLIP) model.")
    app.state.engine = engine
    app.state.batcher = batcher
    app.add_middleware(_BodyLimit, max_bytes=limits.max_request_bytes)

    @app.exception_handler(UploadError)
    async def _upload_error(_request: Request, err: UploadError):
        return JSONResponse({"detail": err.reason}, status_code=err.status)

    async def read_form(request: Request):
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

    async def embed_uploads(files: list[UploadFile], use: str) -> list[Embedded | Failed]:
        """Each upload's embedding for `use` ("predict" or "embed"; from the cache when the
        same bytes came before) or why it cannot be used. Uploads decode in parallel
        threads, then encode in one batch."""
        out: list[Embedded | Failed | None] = [None] * len(files)
        todo: list[tuple[int, str, str, bytes]] = []
        for i, f in enumerate(files):
            name = _safe_name(f.filename, i)
            data = await f.read(limits.max_file_bytes + 1)
            try:
                check_file_size(name, len(data) if len(data) <= limits.max_file_bytes else (f.size or len(data)), limits)
            except InputError as err:
                out[i] = Failed(name, str(err))
                continue
            key = upload_id(data)
            cached = engine.cached(key, use)
            if cached is not None:
                out[i] = Embedded(key, name, cached.embedding, cached.precision)
            else:
                todo.append((i, key, name, data))
        decoded = await asyncio.gather(*(run_in_threadpool(engine.preprocess, data, name) for _, _, name, data in todo),
                                       return_exceptions=True)
        ready = []
        for (i, key, name, _), pixels in zip(todo, decoded):
            if isinstance(pixels, InputError):
                out[i] = Failed(name, str(pixels))
            elif isinstance(pixels, BaseException):
                raise pixels
            else:
                ready.append((i, key, name, pixels))
        if ready:
            vectors = await batcher.submit([(use, t[3]) for t in ready])
            precision = engine.encoders[use].precision
            for (i, key, name, _), vec in zip(ready, vectors):
                item = Embedded(key, name, vec, precision)
                engine.embeddings.put(item)
                out[i] = item
        return out  # type: ignore[return-value]

    def refuse_if_all_failed(results: list[Embedded | Failed]) -> None:
        errors = [r for r in results if isinstance(r, Failed)]
        if results and len(errors) == len(results):
            raise UploadError(status_for(errors[0].error), "; ".join(e.error for e in errors))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", summary="Model, label set, caps and batching counters")
    async def health() -> dict:
        return {"status": "ok", "model": engine.model_spec, "fingerprint": engine.clip.fingerprint()[:16],
                "embed_dim": engine.clip.embed_dim, "image_size": engine.clip.image_size,
                "precision": engine.precisions, "cpu_features": cpu_features().describe(),
                "taxa": len(engine.tree.taxa), "cached_images": len(engine.embeddings),
                "limits": limits.describe(), "batching": batcher.stats.as_dict()}

    @app.get("/taxa", summary="Search the label set by scientific, rank or common name")
    def taxa_search(q: str = "", limit: int = 20) -> dict:  # sync: FastAPI runs it in a thread
        limit = max(1, min(limit, 500))
        total, found = engine.search_taxa(q, limit=limit)
        return {"q": q, "total": total, "taxa": found}

    @app.post("/predict", summary="Classify images (files and/or ids of earlier uploads)",
              openapi_extra=_PREDICT_DOC)
    async def predict(request: Request) -> JSONResponse:
        form = await read_form(request)
        try:
            return await predict_form(form)
        finally:
            await form.close()  # spooled upload files are deleted now, not at garbage collection

    async def predict_form(form) -> JSONResponse:
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        ids = [i for v in form.getlist("ids") if isinstance(v, str) for i in v.replace(",", " ").split()]
        if not files and not ids:
            raise UploadError(400, "no images: send one or more 'files' (or 'ids' of earlier uploads)")
        if len(files) + len(ids) > limits.max_files:
            raise UploadError(413, f"too many images: {len(files) + len(ids)} > {limits.max_files} per request")
        options = _predict_options(form, limits)
        known = [engine.cached(i, "predict") for i in ids]
        missing = [i for i, k in zip(ids, known) if k is None]
        if missing:
            raise UploadError(404, f"unknown image id {missing[0]}: upload the file again"
                              + (f" ({len(missing)} ids unknown)" if len(missing) > 1 else ""))
        uploaded = await embed_uploads(files, "predict")
        if not ids:
            refuse_if_all_failed(uploaded)
        items: list[Embedded | Failed] = [*known, *uploaded]
        good = [it for it in items if isinstance(it, Embedded)]
        try:
            shaped = await run_in_threadpool(engine.classify, good, **options)
        except TreeclipError as err:
            raise UploadError(400, str(err)) from None
        rows = iter(shaped)
        images = [next(rows) if isinstance(it, Embedded) else _error_entry(it) for it in items]
        failed = sum(1 for it in items if isinstance(it, Failed))
        return JSONResponse({"model": engine.model_spec, "precision": engine.encoders["predict"].precision,
                             "mode": "custom" if options["labels"] else "tree-of-life",
                             "rank": options["rank"], "k": options["k"], "threshold": options["threshold"],
                             "subset": options["subset"], "images": images, "failed": failed})

    @app.post("/embed", summary="Image embeddings (L2-normalised)", openapi_extra=_EMBED_DOC)
    async def embed(request: Request) -> JSONResponse:
        form = await read_form(request)
        try:
            return await embed_form(form)
        finally:
            await form.close()

    async def embed_form(form) -> JSONResponse:
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise UploadError(400, "no images: send one or more 'files'")
        uploaded = await embed_uploads(files, "embed")
        refuse_if_all_failed(uploaded)
        images = [{"id": it.id, "file": it.file, "embedding": [round(float(x), 7) for x in it.embedding],
                   "error": None} if isinstance(it, Embedded) else {**_error_entry(it), "embedding": None}
                  for it in uploaded]
        return JSONResponse({"model": engine.model_spec, "dim": engine.clip.embed_dim,
                             "precision": engine.encoders["embed"].precision, "images": images,
                             "failed": sum(1 for it in uploaded if isinstance(it, Failed))})

    return app


def _predict_options(form, limits: UploadLimits) -> dict:
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
    return {"rank": rank, "k": k, "threshold": threshold, "subset": subset, "labels": labels or None}


def _number(value, field: str, kind, default):
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UploadError(400, f"{field} must be a {'whole number' if kind is int else 'number'}, got {value!r}") from None


def _safe_name(filename: str | None, index: int) -> str:
    """The upload's base name for messages and rows (never a client path), or `upload-N`."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(c for c in name if c.isprintable())[:200]
    return name or f"upload-{index + 1}"


@dataclass(frozen=True)
class Failed:
    """An upload that could not be used: its file name and the one-line reason."""

    file: str
    error: str


def _error_entry(failed: Failed) -> dict:
    return {"id": None, "file": failed.file, "predictions": [], "rollup": None, "error": failed.error}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("treeclip")
    except Exception:
        return "0"
