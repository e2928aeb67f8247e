"""Helpers shared by the serve tests: a tiny saved model, multipart posts with the
standard library, images made on the fly, and `treeclip serve` in a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

import pytest
from PIL import Image

TAXA_CSV = """kingdom,phylum,class,order,family,genus,species,common
Animalia,Chordata,Aves,Passeriformes,Corvidae,Pica,hudsonia,black-billed magpie
Animalia,Chordata,Aves,Passeriformes,Corvidae,Pica,pica,Eurasian magpie
Animalia,Chordata,Aves,Passeriformes,Corvidae,Corvus,corax,common raven
Animalia,Chordata,Aves,Strigiformes,Strigidae,Bubo,virginianus,great horned owl
Animalia,Arthropoda,Insecta,Lepidoptera,Nymphalidae,Danaus,plexippus,monarch butterfly
Plantae,Tracheophyta,Magnoliopsida,Rosales,Rosaceae,Rosa,canina,dog rose
"""
N_TAXA = 6
MAX_FILES = 4
MAX_FILE_BYTES = 300_000
MAX_PIXELS = 2_000_000
MAX_REQUEST_BYTES = 4 * MAX_FILE_BYTES + 100_000


# -- helpers --------------------------------------------------------------------------------
def multipart(fields: dict | None = None, files: list[tuple[str, bytes]] | None = None,
              ids: list[str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body (what a browser's FormData sends) and its content type."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()

    def part(headers: str, data: bytes) -> None:
        out.write(f"--{boundary}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n")

    for key, value in (fields or {}).items():
        part(f'Content-Disposition: form-data; name="{key}"', str(value).encode())
    for i in ids or []:
        part('Content-Disposition: form-data; name="ids"', i.encode())
    for name, data in files or []:
        part(f'Content-Disposition: form-data; name="files"; filename="{name}"\r\n'
             "Content-Type: application/octet-stream", data)
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def request(url: str, body: bytes | None = None, content_type: str | None = None,
            headers: dict | None = None) -> tuple[int, dict | str]:
    status, _, answer = exchange(url, body, content_type, headers)
    return status, answer


def exchange(url: str, body: bytes | None = None, content_type: str | None = None, headers: dict | None = None,
             method: str | None = None) -> tuple[int, dict, dict | str]:
    """(status, response headers with lower-cased names, JSON or text body); `headers` are
    sent as given (a `Host` among them replaces the one urllib would send)."""
    req = urllib.request.Request(url, data=body, method=method or ("POST" if body is not None else "GET"))
    if content_type:
        req.add_header("Content-Type", content_type)
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, raw, got = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        status, raw, got = err.code, err.read(), err.headers
    got = {k.lower(): v for k, v in got.items()}
    return status, got, json.loads(raw) if "json" in got.get("content-type", "") else raw.decode()


def post(base: str, path: str = "/predict", headers: dict | None = None, **kw) -> tuple[int, dict]:
    body, ctype = multipart(**kw)
    return request(base + path, body, ctype, headers)


def jpeg(color: tuple[int, int, int], size=(48, 40)) -> bytes:
    img = Image.new("RGB", size, color)
    img.paste((255 - color[0], color[1] // 2, 255 - color[2]), (5, 5, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png(color, size=(36, 50), mode="RGBA") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def pixel_bomb() -> bytes:
    """A 60-byte PNG whose header claims 30000 x 30000 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_model_dir(root: Path) -> Path:
    from treeclip.model import create_model, save_model

    save_model(create_model("micro-vit-32", seed=0), root / "model")
    (root / "taxa.csv").write_text(TAXA_CSV)
    return root


def start_cli_server(model_dir: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`treeclip serve` as a user runs it, on a free port; returns the process and its URL.
    `env` adds environment variables (e.g. TREECLIP_CPU_FEATURES to force a CPU class)."""
    env = {**os.environ, "TREECLIP_CACHE": str(model_dir / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "treeclip", "serve", str(model_dir / "model"),
                             "--taxa", str(model_dir / "taxa.csv"), "--port", "0", "--log-level", "warning",
                             "--templates", "single", *extra], stderr=subprocess.PIPE, text=True, env=env)
    url, lines = None, []
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if not line and proc.poll() is not None:
            pytest.fail("treeclip serve exited early:\n" + "".join(lines))
        if "serving" in line:
            url = line.split(" at ", 1)[1].split()[0].rstrip("/")
    assert url, "".join(lines)
    # keep reading its log, so a chatty server never blocks on a full pipe
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, url


@contextlib.contextmanager
def app_server(app):
    """Serve a FastAPI app in this process (a uvicorn thread on a free loopback port), so a
    test can reach its objects, e.g. hold the micro-batcher. Yields the base URL."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the in-process server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
