"""treeclip serve refuses what it must: foreign Host names (DNS rebinding), requests from
foreign web pages (CSRF), requests over the concurrency limit or the timeout; and it leaks
no local paths. The real server on loopback (`treeclip serve` in a subprocess) and the
app in this process, where the micro-batcher can be held (deterministic: no request has
to arrive, or be slow, within a time window)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from _serve_helpers import app_server, exchange, jpeg, make_model_dir, multipart, post, request, start_cli_server
from treeclip.cache import CachePaths
from treeclip.runtime.options import InferenceOptions
from treeclip.serve.access import Access

SINGLE = InferenceOptions.for_verb("serve", templates="single")

NOTEBOOK = "https://notebook.example.org"


# -- the rules, as functions ------------------------------------------------------------------
@pytest.mark.parametrize("host", ["localhost:8000", "LOCALHOST", "127.0.0.1:8000", "[::1]:8000", "127.0.0.2"])
def test_loopback_hosts_are_answered_by_default(host):
    assert Access.for_server().host_refusal(host) is None


@pytest.mark.parametrize("host", ["evil.example:8000", "localhost.evil.example", "192.168.1.5:8000", "lab-pc.local",
                                  "[::1", "localhost:http", "", None])
def test_other_hosts_are_refused_by_default(host):
    reason = Access.for_server().host_refusal(host)
    assert reason and "\n" not in reason and "refused" in reason


def test_network_server_answers_addresses_and_the_names_it_is_told():
    access = Access.for_server("0.0.0.0", allow_hosts=["Lab-PC.local"])
    assert access.host_refusal("192.168.1.5:8000") is None and access.host_refusal("[fe80::1]:8000") is None
    assert access.host_refusal("lab-pc.local:8000") is None
    reason = access.host_refusal("evil.example:8000")
    assert "'evil.example'" in reason and "--allow-host evil.example" in reason
    assert "--allow-host" in access.warning()
    assert Access.for_server("127.0.0.1").warning() is None
    # a server bound to one address answers that address (and others by address)
    assert Access.for_server("192.168.1.5").host_refusal("192.168.1.5:8000") is None


@pytest.mark.parametrize("origin", [None, "http://localhost:8000", "http://127.0.0.1:5173", "http://[::1]:8000",
                                    "https://localhost"])
def test_loopback_pages_and_no_origin_are_accepted(origin):
    assert Access.for_server().origin_refusal(origin, "localhost:8000") is None


@pytest.mark.parametrize("origin", ["https://evil.example", "http://evil.example:8000", "null", "file://",
                                    "http://localhost.evil.example", "javascript:alert(1)"])
def test_foreign_pages_are_refused(origin):
    reason = Access.for_server().origin_refusal(origin, "localhost:8000")
    assert reason and "\n" not in reason and "refused" in reason


def test_allowed_origins_widen_and_are_normalised():
    access = Access.for_server("0.0.0.0", allow_origins=["HTTP://Lab-PC.local:80/", NOTEBOOK])
    assert access.origin_refusal("http://lab-pc.local", "lab-pc.local") is None
    assert access.host_refusal("lab-pc.local:80") is None  # an allowed origin's host is answered
    assert access.origin_refusal(NOTEBOOK + ":443", "192.168.1.5:8000") is None
    assert access.cors(NOTEBOOK) and not access.cors("http://localhost:8000") and not access.cors("null")
    reason = access.origin_refusal("https://evil.example", "192.168.1.5:8000")
    assert "--allow-origin https://evil.example" in reason
    # the server's own pages, under a name it answers to, are same-origin
    assert access.origin_refusal("http://192.168.1.5:8000", "192.168.1.5:8000") is None
    assert access.origin_refusal("http://192.168.1.5:9999", "192.168.1.5:8000") is not None
    for bad in ("lab-pc.local", "http://lab-pc.local/page", "ftp://lab-pc.local"):
        with pytest.raises(ValueError, match="--allow-origin"):
            Access.for_server(allow_origins=[bad])


# -- the real server ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serve-guards"))


@pytest.fixture(scope="module")
def server(model_dir):
    proc, url = start_cli_server(model_dir, "--allow-origin", NOTEBOOK, "--allow-host", "lab-pc.local")
    base = url.replace("localhost", "127.0.0.1")
    yield base, base.rsplit(":", 1)[1]
    proc.terminate()
    proc.wait(20)


def encoded(base: str) -> int:
    return request(base + "/health")[1]["batching"]["items"]


def test_rebinding_host_is_refused(server):
    base, port = server
    before = encoded(base)
    for path in ("/health", "/"):
        status, body = request(base + path, headers={"Host": f"evil.example:{port}"})
        assert status == 403 and "evil.example" in body["detail"] and "\n" not in body["detail"]
    status, body = post(base, files=[("a.jpg", jpeg((1, 2, 3)))], headers={"Host": f"evil.example:{port}"})
    assert status == 403 and "--allow-host evil.example" in body["detail"]
    assert encoded(base) == before  # refused before anything was decoded or encoded
    for host in (f"localhost:{port}", f"lab-pc.local:{port}", f"notebook.example.org:{port}"):
        assert request(base + "/health", headers={"Host": host})[0] == 200


def test_foreign_origin_is_refused(server):
    base, _ = server
    before = encoded(base)
    status, body = post(base, files=[("a.jpg", jpeg((4, 5, 6)))], headers={"Origin": "https://evil.example"})
    assert status == 403 and "https://evil.example" in body["detail"] and "\n" not in body["detail"]
    status, _ = request(base + "/health", headers={"Origin": "null"})
    assert status == 403
    assert encoded(base) == before
    # a page of this computer may post (and gets no CORS headers: it cannot read other origins' answers)
    status, headers, body = exchange(base + "/predict", *multipart(files=[("b.jpg", jpeg((7, 8, 9)))]),
                                     headers={"Origin": "http://localhost:5173"})
    assert status == 200 and body["failed"] == 0 and "access-control-allow-origin" not in headers


def test_allowed_origin_gets_cors(server):
    base, _ = server
    status, headers, body = exchange(base + "/predict", *multipart(files=[("c.jpg", jpeg((9, 9, 9)))]),
                                     headers={"Origin": NOTEBOOK})
    assert status == 200 and headers["access-control-allow-origin"] == NOTEBOOK and "Origin" in headers["vary"]
    status, headers, _ = exchange(base + "/predict", method="OPTIONS",
                                  headers={"Origin": NOTEBOOK, "Access-Control-Request-Method": "POST"})
    assert status == 204 and headers["access-control-allow-origin"] == NOTEBOOK
    assert "POST" in headers["access-control-allow-methods"]


def test_no_local_paths_in_answers(server, model_dir):
    base, _ = server
    _, health = exchange(base + "/health")[1:]
    status, body = post(base, files=[("d.jpg", jpeg((3, 3, 3)))])
    assert status == 200
    for answer in (health, body):
        text = str(answer)
        assert str(model_dir) not in text and "/model" not in text
    assert health["model"] == body["model"] == "micro-vit-32"


def test_malformed_allow_origin_is_a_usage_error(model_dir):
    result = subprocess.run([sys.executable, "-m", "treeclip", "serve", str(model_dir / "model"),
                             "--allow-origin", "lab-pc.local"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--allow-origin 'lab-pc.local'" in result.stderr
    assert "Traceback" not in result.stderr and "loading" not in result.stderr


# -- concurrency limit and timeouts (the app in this process, its batcher held) -----------------------
@pytest.fixture(scope="module")
def live(model_dir):
    from treeclip.serve import create_app

    app = create_app(str(model_dir / "model"), taxa=str(model_dir / "taxa.csv"), options=SINGLE,
                     caches=CachePaths(model_dir / "cache"), max_wait_ms=0, max_concurrent=1,
                     request_timeout=None)
    with app_server(app) as base:
        yield app, base


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 60  # a bound on a hang, not a window the test relies on
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def test_over_the_concurrency_limit_is_503_at_once(live):
    app, base = live
    batcher, slots = app.state.batcher, app.state.slots
    first: list = []
    batcher.hold()
    try:
        worker = threading.Thread(target=lambda: first.append(post(base, files=[("held.jpg", jpeg((20, 40, 60)))])))
        worker.start()
        wait_until(lambda: batcher.queued == 1, "the first request reached the batcher")
        status, headers, body = exchange(base + "/predict", *multipart(files=[("x.jpg", jpeg((1, 1, 1)))]))
        assert status == 503 and headers["retry-after"] == "1" and "--max-concurrent 1" in body["detail"]
        status, health = request(base + "/health")  # health answers while busy
        assert status == 200 and health["requests"]["in_flight"] == 1 and health["requests"]["refused_busy"] >= 1
    finally:
        batcher.release()
    worker.join(60)
    assert first and first[0][0] == 200, first
    # the slot is given back after the answer went out: wait for it, do not race it
    wait_until(lambda: slots.in_flight == 0, "the first request gave its slot back")


def test_timed_out_request_is_503_and_its_work_dropped(live, monkeypatch):
    app, base = live
    batcher, slots = app.state.batcher, app.state.slots
    monkeypatch.setattr(slots, "timeout_s", 0.5)
    batches, timed_out = batcher.stats.batches, slots.timed_out
    batcher.hold()
    try:  # held: the request cannot be answered in time, however fast the machine
        status, headers, body = exchange(base + "/predict", *multipart(files=[("slow.jpg", jpeg((90, 9, 9)))]))
        assert status == 503 and "--request-timeout" in body["detail"] and headers["retry-after"] == "1"
        assert slots.timed_out == timed_out + 1
    finally:
        batcher.release()
    wait_until(lambda: batcher.queued == 0 and slots.in_flight == 0, "the cancelled work was unwound")
    assert batcher.stats.batches == batches  # its image was never encoded
    monkeypatch.setattr(slots, "timeout_s", None)
    status, body = post(base, files=[("slow.jpg", jpeg((90, 9, 9)))])
    assert status == 200 and batcher.stats.batches == batches + 1
