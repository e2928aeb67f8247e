"""`treeclip serve MODEL_DIR`: a local web page and HTTP API for classifying photos."""

from __future__ import annotations

import click

from treeclip.runtime.precision import PRECISIONS, VERB_DEFAULTS


@click.command("serve")
@click.argument("model")
@click.option("--taxa", default=None, metavar="SPEC",
              help="Label set: CSV/Parquet taxa table, a dataset or model dir with taxa.parquet, "
                   "or ncbi:CLADE. Default: the model dir's own taxa.parquet.")
@click.option("--templates", default="openai", show_default=True, metavar="NAME|FILE",
              help="Prompt templates for the label embeddings: openai (80, as BioCLIP), bioclip (81), "
                   "single, or a file with one template per line.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The default answers only this computer; 0.0.0.0 opens it to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0 picks a free one and prints it).")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu, cuda, cuda:1, mps.")
@click.option("--precision", default=VERB_DEFAULTS["serve"], show_default=True, type=click.Choice(PRECISIONS),
              help="Image tower precision of /predict: fast = int8 (ONNX Runtime) where the CPU has int8 units "
                   "(VNNI/AMX), bf16 where it has only bf16 units; fp32 is exact (docs/predict.md#precision).")
@click.option("--embed-precision", default=VERB_DEFAULTS["serve-embed"], show_default=True,
              type=click.Choice(PRECISIONS), help="Precision of the embeddings /embed returns (exact fp32 by default).")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Most images per model call; requests arriving together share calls.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(0, 1000),
              help="How long a batch waits for more requests before it runs.")
@click.option("--max-files", default=64, show_default=True, type=click.IntRange(1), help="Images per request.")
@click.option("--max-file-mb", default=20.0, show_default=True, type=click.FloatRange(0.001),
              help="Megabytes per image.")
@click.option("--max-pixels", default=50_000_000, show_default=True, type=click.IntRange(1),
              help="Pixels per image (width x height); larger images are refused before decoding.")
@click.option("--max-request-mb", default=200.0, show_default=True, type=click.FloatRange(0.001),
              help="Megabytes per request, all images together.")
@click.option("--cache", "cache_root", default=None, type=click.Path(file_okay=False),
              help="Cache root: label embeddings in labels/, exported graphs in onnx/ "
                   "[default: $TREECLIP_CACHE or ~/.cache/treeclip].")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests for this host name (repeatable), e.g. lab-pc.local when clients "
                   "use that name; loopback names, and with a network --host any IP address, are answered anyway.")
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
              help="Also accept requests from web pages of this origin (repeatable), e.g. "
                   "http://lab-pc.local:8000; its host is answered too and its pages may read the answers (CORS). "
                   "Default: only pages of this computer (loopback) and the server's own.")
@click.option("--max-concurrent", default=32, show_default=True, type=click.IntRange(1),
              help="/predict, /embed and /taxa requests in flight at once; one more gets 503 with Retry-After.")
@click.option("--request-timeout", default=60.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds a request may take; later it gets 503 and its work not yet started is dropped.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--head", type=click.Path(file_okay=False, exists=True),
              help="A head fitted on labelled photos (`treeclip fit`), offered on the page and as /predict's "
                   "head mode beside the tree of life.")
@click.option("--hub-dir", type=click.Path(file_okay=False),
              help="A Hugging Face hub folder to look in for hf-hub:ORG/NAME models and label sets first "
                   "[default: $TREECLIP_HF_HUB] (see treeclip predict --help). Nothing is ever downloaded.")
def serve(model: str, taxa: str | None, templates: str, host: str, port: int, device: str, precision: str,
          embed_precision: str, max_batch: int, max_wait_ms: float, max_files: int, max_file_mb: float,
          max_pixels: int, max_request_mb: float, cache_root: str | None, allow_hosts: tuple[str, ...],
          allow_origins: tuple[str, ...], max_concurrent: int, request_timeout: float, log_level: str,
          head: str | None, hub_dir: str | None) -> None:
    """Serve a web page and HTTP API that classify photos with MODEL.

    MODEL is a model dir (as `treeclip train` writes), `local-dir:DIR`, a checkpoint or a
    registered name. The model and the label embeddings load once, before the server
    starts. Open http://HOST:PORT/ in a browser; the API schema is at /openapi.json.
    Requests for other host names and from other web pages are refused (403) unless
    allowed with --allow-host / --allow-origin (docs/serve.md#reliability-and-security).

    \b
    Example:
      treeclip serve runs/demo/model --taxa runs/demo/data
    """
    import uvicorn

    from treeclip.commands.predict import cache_paths
    from treeclip.runtime.options import InferenceOptions

    from treeclip.serve import Access, UploadLimits, create_app

    try:
        access = Access.for_server(host, allow_hosts, allow_origins)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    limits = UploadLimits(max_files=max_files, max_file_bytes=int(max_file_mb * 1024 * 1024),
                          max_request_bytes=int(max_request_mb * 1024 * 1024),
                          max_pixels=max_pixels)
    sock = _listen(host, port)
    click.echo(f"treeclip: loading {model} and its label embeddings ...", err=True)
    options = InferenceOptions.for_verb("serve", device=device, precision=precision, templates=templates)
    app = create_app(model, taxa=taxa, options=options, embed_precision=embed_precision,
                     caches=cache_paths(cache_root, hub_dir), limits=limits, max_batch=max_batch,
                     max_wait_ms=max_wait_ms, access=access, max_concurrent=max_concurrent,
                     request_timeout=request_timeout, head=head)
    bound = sock.getsockname()[1]
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    used = app.state.engine.precisions
    if access.warning():
        click.echo(access.warning(), err=True)
    click.echo(f"treeclip: serving {model} at http://{shown}:{bound}/  (/predict {used['predict']}, "
               f"/embed {used['embed']}; Ctrl-C stops)", err=True)
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug")
    uvicorn.Server(config).run(sockets=[sock])


def _listen(host: str, port: int):
    """A listening socket, bound before the model loads, so a taken port fails at once and
    the printed address is the real one (--port 0 too)."""
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        from treeclip.errors import TreeclipError

        raise TreeclipError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    return sock
