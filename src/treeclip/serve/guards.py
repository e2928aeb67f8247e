"""ASGI middleware that guards the server before a route runs: the request body cap.

Pure ASGI (no Starlette request objects), so a refusal costs no parsing and a body over
the cap is cut off while it streams in.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from fastapi.responses import JSONResponse

from treeclip.serve.limits import UploadError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


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
                response = JSONResponse({"detail": reason}, status_code=413, headers={"Connection": "close"})
                return await response(scope, receive, send)
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
