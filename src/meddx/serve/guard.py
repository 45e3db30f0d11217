"""The ASGI layer in front of the routes: bearer token, bounded queue, upload size cap, request metrics.

It answers before the body is parsed: 401 without the token, 503 + ``Retry-After`` when the queue of prediction
requests is full, 413 when ``Content-Length`` or the bytes actually sent pass the cap (the body is read with the
cap and then handed to the route, so the multipart parser never sees more), 408 when the body is too slow.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from meddx.serve.metrics import Metrics

PREDICT = re.compile(r"^/v1/models/[^/]+/predict$")
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file


@dataclass(frozen=True)
class Limits:
    """Serving limits (``meddx serve`` options)."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_queue: int = 64  # prediction requests admitted at once (reading, decoding, waiting, running)
    timeout_s: float = 30.0  # per prediction request, body upload included
    batching: bool = True
    max_batch: int = 32
    max_wait_ms: float = 3.0
    retry_after_s: int = 1


def route_of(method: str, path: str) -> str:
    """A bounded label for metrics: the route template, not the raw path."""
    if PREDICT.match(path):
        return "/v1/models/{name}/predict"
    if re.match(r"^/v1/models/[^/]+$", path):
        return "/v1/models/{name}"
    known = ("/", "/v1/models", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect")
    return path if path in known else "other"


async def send_json(send: Any, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: Any, limits: Limits, metrics: Metrics, token: str | None = None) -> None:
        self.app, self.limits, self.metrics, self.token = app, limits, metrics, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        method, path = scope["method"], scope["path"]
        try:
            if self.token is not None and path.startswith(("/v1/", "/metrics")) and not self._authorised(scope):
                await send_json(send_status, 401, "missing or wrong bearer token (send 'Authorization: Bearer "
                                                  "<token>')", {"WWW-Authenticate": "Bearer"})
            elif method == "POST" and PREDICT.match(path):
                await self._predict(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(method, route_of(method, path), status[0], time.perf_counter() - start)

    def _authorised(self, scope: dict) -> bool:
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        expected = f"Bearer {self.token}".encode()
        return hmac.compare_digest(given, expected)

    async def _predict(self, scope: dict, receive: Any, send: Any) -> None:
        m, lim = self.metrics, self.limits
        if m.in_flight >= lim.max_queue:
            m.rejected_full += 1
            return await send_json(send, 503, f"server busy: {lim.max_queue} prediction requests are already "
                                              "queued; retry later", {"Retry-After": str(lim.retry_after_s)})
        cap = lim.max_upload_bytes + MULTIPART_SLACK
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            return await send_json(send, 413, f"upload too large (limit {lim.max_upload_bytes:,} bytes)",
                                   {"Connection": "close"})
        m.in_flight += 1
        try:
            try:
                body = await asyncio.wait_for(_read_body(receive, cap), lim.timeout_s)
            except asyncio.TimeoutError:
                return await send_json(send, 408, f"upload not received within {lim.timeout_s:g} s")
            if body is None:
                return await send_json(send, 413, f"upload too large (limit {lim.max_upload_bytes:,} bytes)",
                                       {"Connection": "close"})
            await self.app(scope, _replay(body, receive), send)
        finally:
            m.in_flight -= 1


async def _read_body(receive: Any, cap: int) -> bytes | None:
    """The request body, or ``None`` once it passes ``cap`` bytes (reading stops there)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = [False]

    async def replay() -> dict:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
