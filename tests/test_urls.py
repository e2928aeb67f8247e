"""Builds from image URLs: the downloader's statuses against a local HTTP server with
injected faults, URL tables, GBIF Darwin Core Archives, iNaturalist open data, and a
build killed mid-download then resumed (no finished URL fetched again, same shards).

Every server here listens on 127.0.0.1 (port 0) in a thread of the test; timeouts are a
fraction of a second, so a fault costs little and nothing can hang.
"""

from __future__ import annotations

import collections
import csv
import json
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from _data_helpers import encoded, scene, zeros_png
from treeclip.data.build import BuildOptions, build_dataset
from treeclip.data.download import DownloadCache, DownloadOptions, download_all
from treeclip.data.reader import TreeDataset
from treeclip.data.url_sources import read_gbif_dwca, read_inat_open_data, read_url_table

TIMEOUT = 0.5
FAST = DownloadOptions(timeout=TIMEOUT, max_seconds=5, retries=3, backoff=0.01, workers=4, per_host=4,
                       min_interval=0, max_bytes=60_000)
OPTS = dict(size=32, resolve=False, workers=1, chunk_size=3, val_fraction=0.2, download=FAST)
PICA = ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "hudsonia")
MORUS = ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba")
RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


# -- the server ---------------------------------------------------------------------------


Route = Callable[[BaseHTTPRequestHandler, int], None]
"""Answers one request; gets the handler and how many times this path was asked before."""


def send(h: BaseHTTPRequestHandler, body: bytes, ctype: str = "image/jpeg", code: int = 200,
         length: int | None = None) -> None:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body) if length is None else length))
    h.end_headers()
    h.wfile.write(body)


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 with one route per path, counting requests."""

    def __init__(self, routes: dict[str, Route], delay: float = 0.0) -> None:
        self.routes, self.delay = routes, delay
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    seen = server.counts[self.path]
                    server.counts[self.path] += 1
                time.sleep(server.delay)
                route = server.routes.get(self.path)
                if route is None:
                    send(self, b"not here", "text/plain", 404)
                else:
                    route(self, seen)

            def log_message(self, *args) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers = []

    def start(routes: dict[str, Route], delay: float = 0.0) -> Server:
        servers.append(Server(routes, delay))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def image(i: int) -> bytes:
    return encoded(scene(i, 96, 72), "JPEG", quality=90)


def ok(body: bytes, ctype: str = "image/jpeg") -> Route:
    return lambda h, seen: send(h, body, ctype)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAULTS: dict[str, tuple[Route, str]] = {
    # path: (what the server does, the status the URL must get)
    "/missing.jpg": (lambda h, seen: send(h, b"gone", "text/plain", 404), "http_404"),
    "/flaky.jpg": (lambda h, seen: send(h, b"oops", "text/plain", 500) if seen == 0 else send(h, image(50)), "ok"),
    "/down.jpg": (lambda h, seen: send(h, b"oops", "text/plain", 503), "http_503"),
    "/slow.jpg": (lambda h, seen: (time.sleep(TIMEOUT * 3), send(h, image(51))), "timeout"),
    "/truncated.jpg": (lambda h, seen: send(h, image(52)[:500], length=len(image(52))), "truncated"),
    "/loop-a": (lambda h, seen: _redirect(h, "/loop-b"), "redirect_loop"),
    "/loop-b": (lambda h, seen: _redirect(h, "/loop-a"), ""),
    "/page.html": (ok(b"<html><body>a page</body></html>", "text/html; charset=utf-8"), "not_image"),
    "/html-as-jpeg.jpg": (ok(b"<html><body>not a photo</body></html>"), "not_image"),
    "/big.jpg": (ok(encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)),
                            "JPEG", quality=95)), "too_large"),
    "/bomb.png": (ok(zeros_png(12_000, 12_000), "image/png"), "decompression_bomb"),
    "/moved.jpg": (lambda h, seen: _redirect(h, "/img/0.jpg"), "ok"),
}


def _redirect(h: BaseHTTPRequestHandler, where: str) -> None:
    h.send_response(302)
    h.send_header("Location", where)
    h.send_header("Content-Length", "0")
    h.end_headers()


def image_routes(n: int) -> dict[str, Route]:
    return {f"/img/{i}.jpg": ok(image(i)) for i in range(n)}


def write_url_table(path: Path, rows: list[tuple[str, tuple[str, ...], str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", *RANKS, "license", "rights_holder"])
        for url, ranks, lic in rows:
            w.writerow([url, *ranks, lic, "A. Photographer"])
    return path


def downloads(out: Path) -> dict[str, dict]:
    with open(out / "downloads.csv", newline="") as f:
        return {r["url"]: r for r in csv.DictReader(f)}


# -- the downloader ---------------------------------------------------------------------------


def test_every_fault_gets_its_status_and_good_images_land_in_the_shards(serve, tmp_path):
    server = serve({**image_routes(6), **{p: r for p, (r, _) in FAULTS.items()}})
    expected = {server.url(f"/img/{i}.jpg"): "ok" for i in range(6)}
    expected.update({server.url(p): status for p, (_, status) in FAULTS.items() if status})
    expected[f"http://127.0.0.1:{closed_port()}/x.jpg"] = "connection_error"
    expected["ftp://127.0.0.1/x.jpg"] = "bad_url"
    expected["not a url"] = "bad_url"
    table = write_url_table(tmp_path / "urls.csv", [(u, PICA if i % 2 else MORUS, "CC-BY")
                                                    for i, u in enumerate(expected)])
    started = time.monotonic()
    result = build_dataset([("urls", str(table))], tmp_path / "out", BuildOptions(**OPTS), progress=False)
    assert time.monotonic() - started < 30  # nothing waited for long

    got = downloads(tmp_path / "out")
    assert {u: r["status"] for u, r in got.items()} == expected
    assert all(r["detail"] for r in got.values() if r["status"] != "ok")
    assert all(int(r["bytes"]) > 0 for r in got.values() if r["status"] == "ok")
    statuses = collections.Counter(expected.values())
    assert result.downloads == dict(sorted(statuses.items()))
    assert server.counts["/flaky.jpg"] == 2 and server.counts["/down.jpg"] == 3  # 5xx retried
    assert server.counts["/missing.jpg"] == 1 and server.counts["/page.html"] == 1  # the rest not
    assert server.counts["/slow.jpg"] == 3 and server.counts["/loop-a"] == 3  # 5 redirects, then given up

    n_ok = statuses["ok"]
    assert result.counts["samples"] == n_ok - 1  # /moved.jpg is /img/0.jpg again: an exact duplicate
    failed_downloads = sum(1 for s in expected.values() if s not in ("ok", "not_image", "decompression_bomb"))
    assert result.counts["download"] == failed_downloads + 1  # the HTML page said text/html
    assert result.counts["image"] == 2  # HTML served as a JPEG and the bomb: refused by decode_image
    report = list(csv.DictReader(open(tmp_path / "out" / "build_report.csv", newline="")))
    assert {r["path"] for r in report if r["stage"] == "download"} == {
        u for u, s in expected.items() if s not in ("ok", "decompression_bomb")} - {server.url("/html-as-jpeg.jpg")}

    cat = pq.read_table(tmp_path / "out" / "catalog.parquet").to_pylist()
    assert {r["url"] for r in cat} <= {u for u, s in expected.items() if s == "ok"}
    assert all(r["license"] == "CC-BY" and r["rights_holder"] == "A. Photographer" for r in cat)
    seen = 0
    for split in ("train", "val"):
        for sample in TreeDataset(tmp_path / "out", split):
            assert sample["meta"]["url"].startswith(server.url("/")) and sample["meta"]["license"] == "CC-BY"
            assert sample["image"].size == (32, 32)
            seen += 1
    assert seen == n_ok - 1


def test_cached_urls_are_not_fetched_again_and_failures_are_kept(serve, tmp_path):
    server = serve({**image_routes(3), "/missing.jpg": FAULTS["/missing.jpg"][0]})
    urls = [server.url(f"/img/{i}.jpg") for i in range(3)] + [server.url("/missing.jpg")]
    cache = DownloadCache(tmp_path / "cache")
    first = download_all(urls + urls[:1], cache, FAST, progress=False)  # a repeated URL: one request
    assert [first[u].status for u in urls] == ["ok", "ok", "ok", "http_404"]
    assert cache.path(urls[0]).read_bytes() == image(0)
    again = download_all(urls, cache, FAST, progress=False)
    assert again == first and sum(server.counts.values()) == 4
    cache.forget_failures()
    download_all(urls, cache, FAST, progress=False)
    assert server.counts["/missing.jpg"] == 2 and server.counts["/img/0.jpg"] == 1


def test_host_limit_and_interval(serve, tmp_path):
    live, peak, lock = [0], [0], threading.Lock()

    def counted(h, seen):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        send(h, image(0))

    server = serve({f"/c/{i}.jpg": counted for i in range(8)})
    opts = DownloadOptions(timeout=2, workers=8, per_host=2, min_interval=0.02, retries=1)
    started = time.monotonic()
    got = download_all([server.url(f"/c/{i}.jpg") for i in range(8)], DownloadCache(tmp_path / "c"), opts,
                       progress=False)
    assert all(d.ok for d in got.values()) and peak[0] <= 2
    assert time.monotonic() - started >= 7 * 0.02  # request starts spaced out


# -- the export formats ------------------------------------------------------------------------


def test_url_table_column_and_missing_url(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("photo,scientific_name,licence\nhttp://127.0.0.1:1/a.jpg,Pica hudsonia,CC0\n,Morus alba,\n")
    items = list(read_url_table(path, "photo"))
    assert items[0].path == "http://127.0.0.1:1/a.jpg" and items[0].remote and items[0].name == "Pica hudsonia"
    assert dict(items[0].extra) == {"url": "http://127.0.0.1:1/a.jpg", "license": "CC0"}
    assert items[1].error.endswith(":2: no URL")
    from treeclip.errors import TreeclipError

    with pytest.raises(TreeclipError, match="no URL column"):
        list(read_url_table(path))


OCCURRENCE = ("gbifID\tkingdom\tphylum\tclass\torder\tfamily\tgenus\tspecificEpithet\tscientificName\t"
              "vernacularName\tlicense\trightsHolder\n"
              "11\tAnimalia\tChordata\tAves\tPasseriformes\tCorvidae\tPica\thudsonia\tPica hudsonia (Sabine, 1823)\t"
              "black-billed magpie\tCC_BY_4_0\tObserver One\n"
              "12\tPlantae\tTracheophyta\tMagnoliopsida\tRosales\tMoraceae\tMorus\talba\tMorus alba L.\t\tCC0_1_0\t\n"
              "13\tFungi\t\t\t\t\t\t\tAmanita muscaria (L.) Lam.\t\tCC0_1_0\t\n")


def gbif_archive(folder: Path, url: Callable[[str], str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "occurrence.txt").write_text(OCCURRENCE)
    (folder / "multimedia.txt").write_text(
        "gbifID\ttype\tformat\tidentifier\tlicense\trightsHolder\tcreator\n"
        f"11\tStillImage\timage/jpeg\t{url('/img/0.jpg')}\thttp://creativecommons.org/licenses/by-nc/4.0/\t\tAnn\n"
        f"11\tSound\taudio/mpeg\t{url('/call.mp3')}\t\t\t\n"
        f"11\t\timage/jpeg\t{url('/img/1.jpg')}\t\tMedia Holder\t\n"
        f"12\tStillImage\t\t{url('/img/2.jpg')}\t\t\t\n"
        f"13\tStillImage\t\t{url('/missing.jpg')}\t\t\t\n"
        f"99\tStillImage\t\t{url('/img/3.jpg')}\t\t\t\n")
    return folder


def test_gbif_darwin_core_archive(serve, tmp_path):
    server = serve({**image_routes(4), "/missing.jpg": FAULTS["/missing.jpg"][0]})
    folder = gbif_archive(tmp_path / "dwca", server.url)
    items = list(read_gbif_dwca(folder))
    assert [(i.source_id, i.path) for i in items] == [
        ("11/0", server.url("/img/0.jpg")), ("11/1", server.url("/img/1.jpg")), ("12/0", server.url("/img/2.jpg")),
        ("13/0", server.url("/missing.jpg"))]  # the sound and the image of an unknown occurrence left out
    assert items[0].ranks == tuple(zip(RANKS, PICA)) and items[0].common == "black-billed magpie"
    assert dict(items[0].extra)["license"] == "http://creativecommons.org/licenses/by-nc/4.0/"
    assert dict(items[0].extra)["rights_holder"] == "Ann" and dict(items[1].extra) == {
        "url": server.url("/img/1.jpg"), "license": "CC_BY_4_0", "rights_holder": "Media Holder"}
    assert items[3].ranks == (("kingdom", "Fungi"),) and items[3].name == "Amanita muscaria (L.) Lam."

    zipped = tmp_path / "0001-gbif.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for name in ("occurrence.txt", "multimedia.txt"):
            z.write(folder / name, name)
    assert list(read_gbif_dwca(zipped)) == [i.__class__(**{**i.__dict__, "source": "gbif:0001-gbif.zip"})
                                            for i in items]
    result = build_dataset([("gbif", str(zipped))], tmp_path / "out", BuildOptions(**{**OPTS, "unresolved": "keep"}),
                           progress=False)
    assert result.downloads == {"http_404": 1, "ok": 3}
    cat = {r["source_id"]: r for r in pq.read_table(tmp_path / "out" / "catalog.parquet").to_pylist()}
    assert sorted(cat) == ["11/0", "11/1", "12/0"] and cat["12/0"]["license"] == "CC0_1_0"
    assert cat["11/0"]["species"] == "hudsonia" and cat["11/0"]["common"] == "black-billed magpie"


def inat_export(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "taxa.csv").write_text(
        "taxon_id\tancestry\trank_level\trank\tname\tactive\n"
        "48460\t\t100\tstateofmatter\tLife\ttrue\n"
        "1\t48460\t70\tkingdom\tAnimalia\ttrue\n"
        "2\t48460/1\t60\tphylum\tChordata\ttrue\n"
        "3\t48460/1/2\t50\tclass\tAves\ttrue\n"
        "7251\t48460/1/2/3\t40\torder\tPasseriformes\ttrue\n"
        "71265\t48460/1/2/3/7251\t30\tfamily\tCorvidae\ttrue\n"
        "8316\t48460/1/2/3/7251/71265\t20\tgenus\tPica\ttrue\n"
        "144757\t48460/1/2/3/7251/71265/8316\t10\tspecies\tPica hudsonia\ttrue\n"
        "999\t48460/1/2/3/7251/71265/8316/144757\t5\tsubspecies\tPica hudsonia foo\ttrue\n")
    (folder / "observations.csv").write_text(
        "observation_uuid\tobserver_id\tlatitude\tlongitude\ttaxon_id\tquality_grade\n"
        "aaaa\t7\t1\t2\t144757\tresearch\n"
        "bbbb\t8\t1\t2\t999\tresearch\n"
        "cccc\t8\t1\t2\t8316\tneeds_id\n"
        "dddd\t8\t1\t2\t\tcasual\n")
    (folder / "photos.csv").write_text(
        "photo_uuid\tphoto_id\tobservation_uuid\tobserver_id\textension\tlicense\twidth\theight\tposition\n"
        "p1\t101\taaaa\t7\tjpg\tCC-BY\t96\t72\t0\n"
        "p2\t102\tbbbb\t8\tjpeg\tCC-BY-NC\t96\t72\t0\n"
        "p3\t103\tcccc\t8\tjpg\tCC0\t96\t72\t0\n"
        "p4\t104\tdddd\t8\tjpg\tCC0\t96\t72\t0\n")
    (folder / "observers.csv").write_text("observer_id\tlogin\tname\n7\tann\tAnn Example\n8\tbob\t\n")
    return folder


def test_inat_open_data(serve, tmp_path):
    folder = inat_export(tmp_path / "inat")
    items = {i.source_id: i for i in read_inat_open_data(folder)}
    assert items["101"].path == "https://inaturalist-open-data.s3.amazonaws.com/photos/101/medium.jpg"
    assert items["101"].ranks == tuple(zip(RANKS, (*PICA[:6], "Pica hudsonia")))
    assert items["102"].ranks == items["101"].ranks  # a subspecies: its species and above
    assert items["103"].ranks == tuple(zip(RANKS[:6], PICA[:6]))  # a genus-level observation
    assert items["104"].error and "no taxon" in items["104"].error
    assert dict(items["101"].extra)["rights_holder"] == "Ann Example" and dict(items["102"].extra) == {
        "url": items["102"].path, "license": "CC-BY-NC", "rights_holder": "bob"}

    server = serve({f"/photos/{100 + i}/medium.{ext}": ok(image(i)) for i, ext in ((1, "jpg"), (2, "jpeg"),
                                                                                     (3, "jpg"))})
    result = build_dataset([("inat-open", f"{folder}::{server.url('')}")], tmp_path / "out",
                           BuildOptions(**{**OPTS, "unresolved": "keep"}), progress=False)
    assert result.downloads == {"ok": 3} and result.counts["input"] == 1
    cat = pq.read_table(tmp_path / "out" / "catalog.parquet").to_pylist()
    assert sorted((r["source_id"], r["species"], r["license"]) for r in cat) == [
        ("101", "hudsonia", "CC-BY"), ("102", "hudsonia", "CC-BY-NC"), ("103", "", "CC0")]


# -- killed mid-download, then resumed --------------------------------------------------------

N_URLS = 40


@pytest.mark.faults
def test_build_killed_mid_download_then_resumed_fetches_no_finished_url_again(serve, tmp_path):
    from test_faults import run, run_killed, treeclip, tree

    routes = {**image_routes(N_URLS), "/missing.jpg": FAULTS["/missing.jpg"][0]}
    server = serve(routes, delay=0.03)
    urls = [server.url(f"/img/{i}.jpg") for i in range(N_URLS)] + [server.url("/missing.jpg")]
    table = write_url_table(tmp_path / "urls.csv", [(u, (PICA, MORUS)[i % 2], "CC0") for i, u in enumerate(urls)])
    cli = ("--no-resolve", "--size", "32", "--chunk-size", "4", "--shard-size", "5", "--workers", "1", "-q",
           "--download-timeout", "5", "--download-workers", "2", "--per-host", "2", "--host-interval", "0")
    log = tmp_path / "log.txt"
    assert run(treeclip("data", "build", str(tmp_path / "reference"), "--urls", str(table), *cli), log) == 1, \
        log.read_text()
    server.counts.clear()

    out = tmp_path / "out"
    cache = out / ".build" / "downloads"

    def fetched() -> set[str]:
        return {p.name for p in cache.iterdir() if not p.name.startswith(".")} if cache.is_dir() else set()

    args = treeclip("data", "build", str(out), "--urls", str(table), *cli)
    run_killed(args, lambda: len(fetched()) >= 8, log, timeout_s=120)
    finished = fetched()
    assert 8 <= len(finished) < len(urls) and not list(out.glob(".build/chunk-*.json"))
    before = collections.Counter(server.counts)
    assert run(args + ["--resume"], log) == 1, log.read_text()

    cached_urls = [u for u in urls if DownloadCache.path_in(cache, u).name in finished]
    for u in cached_urls:
        path = u[len(server.url("")):]
        assert server.counts[path] == before[path] == 1, path  # not asked again by the resumed build
    assert all(n <= 2 for n in server.counts.values())  # at most once more: one in flight at the kill
    assert sum(server.counts.values()) >= len(urls)
    assert tree(out) == tree(tmp_path / "reference")  # shards, catalog, reports, manifest: byte for byte
    assert json.loads((out / "manifest.json").read_text())["build"]["downloads"] == {"http_404": 1, "ok": N_URLS}
