"""Fetching source images over HTTP(S) for a build, with the standard library only.

`download_all` fetches URLs in a thread pool into a `DownloadCache` (files keyed by
sha256 of the URL, each written under a temporary name and renamed when whole, so a
killed build never fetches a finished URL again) and gives every URL one status:

- `ok`: fetched whole (the image itself is checked later by `decode_image`);
- `http_<code>`: the server answered something else than 200 (`http_404`, `http_500`
  after the retries, ...);
- `timeout`: connect or read took longer than `timeout` (or the whole try longer than
  `max_seconds`), on every try;
- `connection_error`: refused, reset, DNS or TLS failure, a malformed HTTP answer, on
  every try;
- `truncated`: the body ended before its Content-Length, on every try;
- `not_image`: the server said the body is text, HTML, JSON or XML (not read further);
  `decode_image` gives the same status to a body that is no image whatever its type;
- `too_large`: the body is longer than `max_bytes` (said by Content-Length, or counted
  while streaming: the transfer stops there);
- `redirect_loop`: more than `max_redirects` redirects (or a redirect without Location
  is `http_3xx`);
- `bad_url`: not an http(s) URL with a host (also a redirect to one).

After download, `image_status` maps the decoder's one-line errors to `not_image`,
`decompression_bomb`, `truncated`, `empty`, `corrupt_image` or `bad_image`.

Politeness: at most `per_host` requests to one host at a time, at least `min_interval`
seconds between the starts of two requests to one host; 5xx, 429, timeouts, connection
errors and truncated bodies are tried again `retries` times in all, waiting
`backoff * 2**n` seconds (at most 30) between tries.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urljoin, urlsplit

from treeclip.errors import TreeclipError
from treeclip.fsutil import atomic_path, remove_stale_temporaries, write_json_atomic
from treeclip.log import get_logger, progress_bar

log = get_logger(__name__)

OK = "ok"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
TRUNCATED = "truncated"
NOT_IMAGE = "not_image"
TOO_LARGE = "too_large"
REDIRECT_LOOP = "redirect_loop"
BAD_URL = "bad_url"
RETRIED = frozenset({TIMEOUT, CONNECTION_ERROR, TRUNCATED})
"""Statuses worth another try (besides 5xx and 429): the network, not the resource."""

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml")
BLOCK = 1 << 16
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class DownloadOptions:
    """How URLs are fetched (none of it changes a fetched image, so a resume may change
    it: statuses already recorded are kept)."""

    timeout: float = 20.0  # seconds to connect, and for each read
    max_seconds: float = 300.0  # one try in all (a server trickling bytes)
    retries: int = 3  # tries in all, for 5xx/429, timeouts, connection errors, truncation
    backoff: float = 1.0  # seconds before the second try; doubled each time
    workers: int = 16  # download threads
    per_host: int = 4  # requests in flight to one host
    min_interval: float = 0.05  # seconds between request starts to one host
    max_bytes: int = 50 * 1024 * 1024  # per image
    max_redirects: int = 5
    user_agent: str = "treeclip-data-build (+https://github.com/Imageomics/bioclip)"

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.max_seconds <= 0:
            raise TreeclipError(f"download timeout must be > 0, not {self.timeout} / {self.max_seconds}")
        if self.retries < 1 or self.workers < 1 or self.per_host < 1:
            raise TreeclipError("download retries, workers and per-host must be at least 1")
        if self.max_bytes < 1 or self.max_redirects < 0 or self.backoff < 0 or self.min_interval < 0:
            raise TreeclipError("download byte cap must be >= 1; redirects, backoff and interval >= 0")


@dataclass(frozen=True)
class Download:
    """The outcome for one URL: `status` (see the module docstring), a one-line `detail`,
    and the bytes kept (0 unless ok)."""

    url: str
    status: str
    detail: str = ""
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == OK


def is_url_ok(url: str) -> bool:
    """Whether `url` is one the downloader will try: http or https with a host."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad port, an unbalanced IPv6 bracket
        return False


def image_status(error: str) -> str:
    """The download status of a fetched body that `decode_image` refused, from its
    one-line error."""
    for words, status in (("not an image", NOT_IMAGE), ("decompression bomb", "decompression_bomb"),
                          ("aspect-ratio bomb", "decompression_bomb"), ("too large to resize", "decompression_bomb"),
                          ("too many pixels", "decompression_bomb"), ("truncated", TRUNCATED),
                          ("empty file", "empty"), ("corrupt", "corrupt_image"), ("file too large", TOO_LARGE)):
        if words in error:
            return status
    return "bad_image"


# -- the cache ----------------------------------------------------------------------------


class DownloadCache:
    """Fetched bodies in a folder, one file per URL named by sha256(url); a failure is a
    `<sha>.json` record beside them. A file there is whole (renamed into place)."""

    def __init__(self, root: str | Path, *, clean: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if clean:  # not in a task beside others: their bodies in flight look stale too
            remove_stale_temporaries(self.root)  # half-written bodies of a killed build

    @staticmethod
    def path_in(root: Path, url: str) -> Path:
        """Where the body of `url` is kept under `root`."""
        return Path(root) / hashlib.sha256(url.encode("utf-8")).hexdigest()

    def path(self, url: str) -> Path:
        return self.path_in(self.root, url)

    def lookup(self, url: str) -> Download | None:
        """What an earlier run (or this one) got for `url`, or None when not fetched yet."""
        body = self.path(url)
        if body.is_file():
            return Download(url, OK, "", body.stat().st_size)
        try:
            rec = json.loads(body.with_suffix(".json").read_text(encoding="utf-8"))
            return Download(url, rec["status"], rec.get("detail", ""), 0)
        except (OSError, ValueError, KeyError):
            return None

    def record_failure(self, d: Download) -> None:
        write_json_atomic(self.path(d.url).with_suffix(".json"), {"url": d.url, "status": d.status,
                                                                  "detail": d.detail})

    def forget_failures(self) -> None:
        """Drop the failure records (a new build tries those URLs again; bodies stay)."""
        for p in self.root.glob("*.json"):
            p.unlink(missing_ok=True)


# -- politeness -----------------------------------------------------------------------------


class HostLimiter:
    """At most `per_host` requests in flight to one host, and request starts to one host
    at least `min_interval` seconds apart."""

    def __init__(self, per_host: int, min_interval: float) -> None:
        self.per_host, self.min_interval = per_host, min_interval
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._next: dict[str, float] = {}

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._lock:
            sem = self._slots.setdefault(host, threading.BoundedSemaphore(self.per_host))
        with sem:
            with self._lock:  # reserve the next start time, then wait outside the lock
                now = time.monotonic()
                start = max(now, self._next.get(host, 0.0))
                self._next[host] = start + self.min_interval
            if start > now:
                time.sleep(start - now)
            yield


# -- one URL ----------------------------------------------------------------------------------


class _Failed(Exception):
    """One try ended without the body: carries its status and detail."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return cls(parts.hostname, parts.port, timeout=timeout), target


def _write(f, block: bytes, dest: Path) -> None:
    """Write to the cache; a full or broken disk stops the build (it is no fault of the
    URL, and every later download would fail the same way)."""
    try:
        f.write(block)
    except OSError as e:
        raise TreeclipError(f"{dest.parent}: cannot write a download ({e.strerror or e})") from None


def _stream(resp: http.client.HTTPResponse, dest: Path, opts: DownloadOptions, deadline: float) -> int:
    """Copy the body to `dest`, stopping past the byte cap or the deadline; its length."""
    declared = resp.getheader("Content-Length")
    expected = int(declared) if declared and declared.strip().isdigit() else None
    if expected is not None and expected > opts.max_bytes:
        raise _Failed(TOO_LARGE, f"Content-Length {expected:,} bytes > {opts.max_bytes:,}")
    n = 0
    with open(dest, "wb") as f:
        while block := resp.read(BLOCK):
            n += len(block)
            if n > opts.max_bytes:
                raise _Failed(TOO_LARGE, f"more than {opts.max_bytes:,} bytes")
            if time.monotonic() > deadline:
                raise _Failed(TIMEOUT, f"body not read within {opts.max_seconds:g} s")
            _write(f, block, dest)
    if expected is not None and n < expected:
        raise _Failed(TRUNCATED, f"body ended after {n:,} of {expected:,} bytes")
    return n


def _get(url: str, dest: Path, opts: DownloadOptions, limiter: HostLimiter) -> int:
    """One try: follow redirects and stream the body to `dest`; its length, or _Failed."""
    deadline = time.monotonic() + opts.max_seconds
    for _ in range(opts.max_redirects + 1):
        if not is_url_ok(url):
            raise _Failed(BAD_URL, f"not an http(s) URL with a host: {url[:200]}")
        with limiter.slot(urlsplit(url).hostname or ""):
            conn, target = _connection(url, opts.timeout)
            try:
                conn.request("GET", target, headers={"User-Agent": opts.user_agent, "Accept": "image/*, */*;q=0.5"})
                resp = conn.getresponse()
                if resp.status in REDIRECT_CODES:
                    where = resp.getheader("Location")
                    if not where:
                        raise _Failed(f"http_{resp.status}", "redirect without a Location")
                    url = urljoin(url, where.strip())
                    continue
                if resp.status != 200:
                    raise _Failed(f"http_{resp.status}", f"HTTP {resp.status} {resp.reason}".strip())
                ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
                if ctype.startswith(TEXT_TYPES):
                    raise _Failed(NOT_IMAGE, f"Content-Type {ctype}, not an image")
                return _stream(resp, dest, opts, deadline)
            finally:
                conn.close()
    raise _Failed(REDIRECT_LOOP, f"more than {opts.max_redirects} redirects")


def _try_once(url: str, dest: Path, opts: DownloadOptions, limiter: HostLimiter) -> int:
    """`_get` with every network exception turned into a _Failed status."""
    try:
        return _get(url, dest, opts, limiter)
    except _Failed:
        raise
    except TimeoutError:  # socket.timeout: connect or one read took longer than the timeout
        raise _Failed(TIMEOUT, f"no answer within {opts.timeout:g} s") from None
    except http.client.IncompleteRead as e:
        raise _Failed(TRUNCATED, f"body ended early ({len(e.partial):,} bytes read)") from None
    except (http.client.HTTPException, OSError, ValueError) as e:  # refused, reset, DNS, TLS, bad answer
        raise _Failed(CONNECTION_ERROR, f"{type(e).__name__}: {' '.join(str(e).split())[:120]}") from None


def _retried(status: str) -> bool:
    code = status[5:] if status.startswith("http_") else ""
    return status in RETRIED or code.startswith("5") or code == "429"


def fetch(url: str, cache: DownloadCache, opts: DownloadOptions, limiter: HostLimiter) -> Download:
    """Fetch `url` into `cache` (tries, backoff); its `Download`. Failures are recorded in
    the cache too, so a resumed build does not ask again."""
    failed = _Failed(BAD_URL, "")
    for attempt in range(opts.retries):
        if attempt:
            time.sleep(min(MAX_BACKOFF_S, opts.backoff * 2 ** (attempt - 1)))
        try:
            with atomic_path(cache.path(url)) as tmp:  # renamed into place only when whole
                n = _try_once(url, tmp, opts, limiter)
            return Download(url, OK, "", n)
        except _Failed as e:
            failed = e
            if not _retried(e.status):
                break
    tries = f" (after {opts.retries} tries)" if _retried(failed.status) and opts.retries > 1 else ""
    result = Download(url, failed.status, failed.detail + tries)
    cache.record_failure(result)
    return result


def download_all(urls: Iterable[str], cache: DownloadCache, opts: DownloadOptions, *,
                 progress: bool = True) -> dict[str, Download]:
    """Every distinct URL's `Download`: from the cache when an earlier run got it, else
    fetched in `opts.workers` threads."""
    results: dict[str, Download] = {}
    todo = []
    for url in dict.fromkeys(urls):
        known = cache.lookup(url)
        if known is None:
            todo.append(url)
        else:
            results[url] = known
    if results:
        log.info(f"{len(results)} URLs already fetched or failed; {len(todo)} to fetch")
    if not todo:
        return results
    limiter = HostLimiter(opts.per_host, opts.min_interval)
    bar = progress_bar(len(todo), desc="downloading", enabled=progress)
    pool = ThreadPoolExecutor(max_workers=min(opts.workers, len(todo)), thread_name_prefix="download")
    try:
        futures = {pool.submit(fetch, url, cache, opts, limiter): url for url in todo}
        for fut in as_completed(futures):
            d = fut.result()
            results[d.url] = d
            bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return results
