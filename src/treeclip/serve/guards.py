"""ASGI middleware that guards the server before a route runs: who may ask (`Host` and
`Origin`, `treeclip.serve.access`), how many requests may work at once and for how long,
and the request body cap.

Pure ASGI (no Starlette request objects), so a refusal costs no parsing and a body over
the cap is cut off while it streams in. Every refusal is JSON `{"detail": one line}`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from fastapi.responses import JSONResponse, Response

from treeclip.serve.access import Access
from treeclip.serve.limits import UploadError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

LIMITED_PATHS = frozenset({"/predict", "/embed", "/taxa"})
"""The endpoints that do work; `/`, `/health` and the schema stay answerable when busy."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, reason: str,
                  headers: dict[str, str] | None = None) -> None:
    # the body may be unread: the connection closes, so nothing of it is taken for a next request
    response = JSONResponse({"detail": reason}, status_code=status, headers={"Connection": "close", **(headers or {})})
    await response(scope, receive, send)


class HostOriginGuard:
    """403 for a `Host` this server is not known by (DNS rebinding) and for a request from
    a web page `Origin` it does not allow (cross-site requests); CORS headers for the
    origins the operator named, so their pages can read the answers."""

    def __init__(self, app: Callable, access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host, origin = _header(scope, b"host"), _header(scope, b"origin")
        reason = self.access.host_refusal(host) or self.access.origin_refusal(origin, host or "")
        if reason:
            return await _refuse(scope, receive, send, 403, reason)
        if not self.access.cors(origin):
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            return await self._preflight(scope, receive, send, origin)

        async def with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"access-control-allow-origin", origin.encode()),
                                      (b"vary", b"Origin")]
            await send(message)

        return await self.app(scope, receive, with_cors)

    @staticmethod
    async def _preflight(scope: Scope, receive: Receive, send: Send, origin: str) -> None:
        headers = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": "GET, POST",
                   "Access-Control-Max-Age": "600", "Vary": "Origin"}
        asked = _header(scope, b"access-control-request-headers")
        if asked:
            headers["Access-Control-Allow-Headers"] = asked
        await Response(status_code=204, headers=headers)(scope, receive, send)


@dataclass
class RequestSlots:
    """The concurrency limit and the timeout of the endpoints that do work, and what they
    refused (shown by /health)."""

    max_concurrent: int = 32
    timeout_s: float | None = 60.0
    in_flight: int = 0
    refused_busy: int = 0
    timed_out: int = 0

    def as_dict(self) -> dict:
        return {"max_concurrent": self.max_concurrent, "timeout_s": self.timeout_s, "in_flight": self.in_flight,
                "refused_busy": self.refused_busy, "timed_out": self.timed_out}


class RequestLimiter:
    """At most `slots.max_concurrent` requests to `LIMITED_PATHS` at once (one more gets a
    503 with Retry-After at once, never a wait), each answered within `slots.timeout_s`
    or given a 503 and cancelled: work it queued and nobody started yet is dropped."""

    def __init__(self, app: Callable, slots: RequestSlots) -> None:
        self.app, self.slots = app, slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in LIMITED_PATHS:
            return await self.app(scope, receive, send)
        slots = self.slots
        if slots.in_flight >= slots.max_concurrent:  # no await between check and count: one event loop
            slots.refused_busy += 1
            return await _refuse(scope, receive, send, 503, f"server busy: {slots.in_flight} requests in flight "
                                 f"(--max-concurrent {slots.max_concurrent}); try again shortly", {"Retry-After": "1"})
        slots.in_flight += 1
        try:
            await self._timed(scope, receive, send)
        finally:
            slots.in_flight -= 1

    async def _timed(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = timed_out = False

        async def tracked(message: dict) -> None:
            nonlocal started
            if timed_out:
                return  # the 503 went out; a late answer is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, tracked))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.slots.timeout_s)
            if done or started:  # answered, or answering: a response under way is not cut off
                return await task
            timed_out = True
            task.cancel()
            self.slots.timed_out += 1
            await _refuse(scope, receive, send, 503, f"request not answered within {self.slots.timeout_s:g} s "
                          "(--request-timeout): refused, its work dropped", {"Retry-After": "1"})
            with contextlib.suppress(asyncio.CancelledError):
                await task  # the slot stays taken until the cancelled work has unwound
        finally:
            if not task.done():  # this request itself was cancelled (the server is stopping)
                task.cancel()


class BodyLimit:
    """Refuse request bodies over `max_bytes`, from Content-Length when the client sends
    one and by counting while the body streams in otherwise."""

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        reason = f"request too large: more than {self.max_bytes:,} bytes"
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await _refuse(scope, receive, send, 413, reason)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadError(413, reason)
            return message

        return await self.app(scope, counted, send)
