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
(like the CLI's error rows). The server keeps serving either way. Before any route runs,
`treeclip.serve.guards` refuses foreign `Host`s and web page `Origin`s (403), requests over
the concurrency limit or the timeout (503) and bodies over the size cap (413).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from treeclip.cache import CachePaths
from treeclip.runtime.options import InferenceOptions
from treeclip.runtime.precision import VERB_DEFAULTS, cpu_features
from treeclip.serve.access import Access
from treeclip.serve.engine import ServeEngine
from treeclip.serve.forms import MAX_K, embed_images, predict_images, predict_options, read_form
from treeclip.serve.guards import BodyLimit, HostOriginGuard, RequestLimiter, RequestSlots
from treeclip.serve.limits import UploadError, UploadLimits
from treeclip.taxonomy.taxon import RANKS


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


def create_app(model: str | Path | Any | ServeEngine, *, taxa: Any = None, options: InferenceOptions | None = None,
               embed_precision: str = VERB_DEFAULTS["serve-embed"], caches: CachePaths | None = None,
               limits: UploadLimits | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
               cache_size: int = 4096, access: Access | None = None, max_concurrent: int = 32,
               request_timeout: float | None = 60.0, head: str | Path | None = None) -> FastAPI:
    """The FastAPI app for `model` (a model dir or spec `load_model` accepts, a `ClipModel`,
    or a ready `ServeEngine`, which brings its own caps and batching settings). The model
    and label embeddings load here, once; serve the app with uvicorn (`treeclip serve` does).
    `options`, `embed_precision`, `caches`, `head`: as `ServeEngine`.

    `access`: the `Host` names and web page origins answered (default: loopback only,
    `Access.for_server()`). At most `max_concurrent` /predict, /embed and /taxa requests
    are in flight (more get a 503 at once); one not answered within `request_timeout`
    seconds (None: no limit) gets a 503 and its work is cancelled."""
    if isinstance(model, ServeEngine):
        engine = model
    else:
        engine = ServeEngine(model, taxa=taxa, options=options, embed_precision=embed_precision, caches=caches,
                             limits=limits, cache_size=cache_size, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             head=head)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    # /docs and /redoc would load their scripts from a CDN; the page must work offline
    app = FastAPI(title="treeclip", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Classify and embed organism photos with a treeclip (BioCLIP) model.")
    app.state.engine = engine
    app.state.batcher = engine.batcher
    app.state.slots = slots = RequestSlots(max_concurrent=max_concurrent, timeout_s=request_timeout)
    # the last added runs first: who may ask, then how many at once, then how large
    app.add_middleware(BodyLimit, max_bytes=engine.limits.max_request_bytes)
    app.add_middleware(RequestLimiter, slots=slots)
    app.add_middleware(HostOriginGuard, access=access or Access.for_server())
    app.add_exception_handler(UploadError, _upload_error)
    _add_routes(app, engine, slots)
    return app


async def _upload_error(_request: Request, err: UploadError) -> JSONResponse:
    return JSONResponse({"detail": err.reason}, status_code=err.status)


def _add_routes(app: FastAPI, engine: ServeEngine, slots: RequestSlots) -> None:
    """The endpoints: each reads its input, asks the engine, and answers in JSON."""
    page = resources.files("treeclip.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    limits = engine.limits

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", summary="Model, label set, caps, request and batching counters")
    async def health() -> dict:
        # no local paths: the model by its name (the operator saw the path at start-up)
        return {"status": "ok", "model": engine.model_name, "fingerprint": engine.clip.fingerprint()[:16],
                "embed_dim": engine.clip.embed_dim, "image_size": engine.clip.image_size,
                "precision": engine.precisions, "backend": engine.backends, "cpu_features": cpu_features().describe(),
                "taxa": len(engine.tree.columns), "cached_images": len(engine.embeddings),
                "head": ({"classes": engine.head.labels, "kind": engine.head.head.kind} if engine.head else None),
                "label_sets": len(engine.classifiers), "limits": limits.describe(),
                "requests": slots.as_dict(), "batching": engine.batcher.stats.as_dict()}

    @app.get("/taxa", summary="Search the label set by scientific, rank or common name")
    def taxa_search(q: str = "", limit: int = 20) -> dict:  # sync: FastAPI runs it in a thread
        limit = max(1, min(limit, 500))
        total, found = engine.search_taxa(q, limit=limit)
        return {"q": q, "total": total, "taxa": found}

    @app.post("/predict", summary="Classify images (files and/or ids of earlier uploads)",
              openapi_extra=_PREDICT_DOC)
    async def predict(request: Request) -> JSONResponse:
        form = await read_form(request, limits)
        try:
            files, ids = predict_images(form, limits)
            options = predict_options(form, limits)
            return JSONResponse(await engine.predict(files, ids, options))
        finally:
            await form.close()  # spooled upload files are deleted now, not at garbage collection

    @app.post("/embed", summary="Image embeddings (L2-normalised)", openapi_extra=_EMBED_DOC)
    async def embed(request: Request) -> JSONResponse:
        form = await read_form(request, limits)
        try:
            return JSONResponse(await engine.embed(embed_images(form)))
        finally:
            await form.close()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("treeclip")
    except Exception:
        return "0"
