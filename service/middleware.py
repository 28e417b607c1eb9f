"""ASGI middleware around the routes: how request bodies are read, and per-request metrics.

Pure ASGI (not BaseHTTPMiddleware) so that bodies are streamed through untouched.
"""

import asyncio
import re
import zlib
from collections.abc import Callable
from time import perf_counter

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dynadapter.service.errors import (
    ApiError,
    bad_header,
    bad_request,
    error_response,
    payload_too_large,
    request_timeout,
    unsupported_encoding,
)
from dynadapter.service.metrics import ServiceMetrics

SMALL_BODY_BYTES = 64 * 1024  # the body limit of the routes that are not inference: small JSON (repository)
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "٥" and "²"
# Content-Encoding -> zlib's wbits: gzip's wrapper, and HTTP's "deflate", which is the zlib format (RFC 9110 8.4.1.2).
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


# A route that knows a shorter deadline for its body (deadline_ms) puts it in scope["state"] under this:
# one wait per receive, here, rather than a second asyncio.wait_for around the route's read, whose
# cancellation Python before 3.12 can lose when a chunk arrives at the same moment.
READ_DEADLINE_KEY = "dynadapter_read_deadline"


def read_within(scope: Scope, timeout_s: float) -> None:
    """Hold this request's body to `timeout_s` seconds from now (408 past it), if less than the setting's."""
    scope.setdefault("state", {})[READ_DEADLINE_KEY] = (perf_counter() + timeout_s, timeout_s)


def ascii_length(value: str) -> int | None:
    """A header's decimal length (ASCII digits only, no sign or space), or None if it is not one."""
    return int(value) if _DIGITS.fullmatch(value) and len(value) <= 19 else None


class _Inflater:
    """Decompresses a body while it streams in; more than `max_bytes` out is a 413, found without inflating more.

    zlib's `max_length` stops each step at one byte past the limit, so a zip bomb costs at most
    `max_bytes` of memory whatever it would inflate to. Gzip members that follow one another are read
    as one body, as gzip(1) does.
    """

    def __init__(self, coding: str, max_bytes: int) -> None:
        self._wbits = _CODINGS[coding]
        self._coding = coding
        self._max_bytes = max_bytes
        self._produced = 0
        self._inflater = zlib.decompressobj(self._wbits)

    def feed(self, data: bytes, last: bool) -> bytes:
        """The decompressed bytes of `data`; 413 past `max_bytes`, 400 for a corrupt or (at `last`) truncated body."""
        out = []
        try:
            while data:
                chunk = self._inflater.decompress(data, self._max_bytes - self._produced + 1)
                self._produced += len(chunk)
                if self._produced > self._max_bytes:
                    raise payload_too_large(self._max_bytes)
                out.append(chunk)
                # Within the limit zlib took all of `data`, unless a stream ended and another (gzip member) follows.
                data = self._inflater.unused_data if self._inflater.eof else b""
                if data:
                    self._inflater = zlib.decompressobj(self._wbits)
        except zlib.error:
            raise bad_request(f"Content-Encoding: the body is not valid {self._coding} data") from None
        if last and not self._inflater.eof:
            raise bad_request(f"Content-Encoding: the {self._coding} body is cut short")
        return b"".join(out)


class BodyReadingMiddleware:
    """How every route reads its body: bounded in bytes and time, decompressed, its length headers checked.

    - `Content-Length` must be one ASCII decimal number (several equal values count as one); a body it
      declares over the route's limit is 413 at once, before a byte is read.
    - While the body streams in (chunked uploads, lying headers too), more than the route's limit is 413:
      `max_bytes` on the inference routes, `small_bytes` elsewhere (the repository's small JSON bodies).
      A body with `Content-Encoding: gzip` or `deflate` is decompressed as it streams, and its
      *decompressed* bytes count; other codings are 415.
    - The body must have arrived within `timeout_s` seconds of the request's start, or the shorter
      deadline its route set (`read_within`), else 408 `request_timeout` (a client trickling its body
      holds nothing for longer).

    The streaming errors are raised inside the route's body read, so the usual error handlers render
    them; a route that reads no body is not held to them.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, small_bytes: int, timeout_s: float, is_large: Callable[[str], bool]
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.small_bytes = small_bytes
        self.timeout_s = timeout_s
        self.is_large = is_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        limit = self.max_bytes if self.is_large(scope["path"]) else self.small_bytes
        try:
            inflater = self._check_headers(scope, limit)
        except ApiError as error:
            response = error_response(error.status_code, error.code, error.message, error.headers, scope["path"])
            await response(scope, receive, send)
            return
        received = 0
        done = False

        async def bounded_receive() -> Message:
            nonlocal received, done
            if done:  # after the body: a disconnect, awaited without a deadline
                return await receive()
            deadline, seconds = min(  # the earlier of the setting's and the route's
                (start + self.timeout_s, self.timeout_s),
                scope.get("state", {}).get(READ_DEADLINE_KEY, (float("inf"), 0.0)),
            )
            try:
                message = await asyncio.wait_for(receive(), deadline - perf_counter())
            except asyncio.TimeoutError:
                raise request_timeout(seconds) from None
            if message["type"] != "http.request":
                return message
            body, done = message.get("body", b""), not message.get("more_body", False)
            received += len(body)
            if received > limit:
                raise payload_too_large(limit)
            if inflater is not None:
                message = {**message, "body": inflater.feed(body, done)}
            return message

        await self.app(scope, bounded_receive, send)

    def _check_headers(self, scope: Scope, limit: int) -> _Inflater | None:
        """Check Content-Length and Content-Encoding; the decompressor the body needs, if any."""
        headers = Headers(scope=scope)
        lengths = {value.strip() for value in headers.getlist("content-length")}
        if lengths:
            declared = ascii_length(lengths.pop()) if len(lengths) == 1 else None
            if declared is None:
                raise bad_header("Content-Length", "must be one decimal number of bytes")
            if declared > limit:
                raise payload_too_large(limit)
        codings = [
            coding.strip().lower()
            for value in headers.getlist("content-encoding")
            for coding in value.split(",")
            if coding.strip().lower() not in ("", "identity")
        ]
        if not codings:
            return None
        if len(codings) > 1 or codings[0] not in _CODINGS:
            raise unsupported_encoding(", ".join(codings))
        # The route sees the decompressed body: its length and coding no longer apply.
        scope["headers"] = [
            (key, value) for key, value in scope["headers"] if key not in (b"content-length", b"content-encoding")
        ]
        return _Inflater(codings[0], limit)


ModelLabel = tuple[str, str]  # (model, version) of the metrics
_LABEL_KEY = "dynadapter_model"  # the (model, version) a request ran on, in scope["state"] under this


def label_request(scope: Scope, model: str, version: str) -> None:
    """Count this request under the model version that serves it (`RequestMetricsMiddleware`)."""
    scope.setdefault("state", {})[_LABEL_KEY] = (model, version)


class RequestMetricsMiddleware:
    """Counts, times and gauges the inference requests (`is_inference(path)`), by model, version and status code.

    The route stores the model version it ran on in the request state; a request refused before
    that (401, 413, 404) is counted under `guess(scope)`, the model its path or query names.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        is_inference: Callable[[str], bool],
        guess: Callable[[Scope], ModelLabel],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.is_inference = is_inference
        self.guess = guess

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.is_inference(scope["path"]):
            await self.app(scope, receive, send)
            return
        guessed = self.guess(scope)
        inflight = self.metrics.inflight.labels(*guessed)
        status = 500  # stays 500 if the app raises before answering
        recorded = False
        start = perf_counter()

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                inflight.dec()
                model, version = scope.get("state", {}).get(_LABEL_KEY, guessed)
                self.metrics.record_request(model, version, status, perf_counter() - start)

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Before the last byte leaves (the app may still clean up after it, e.g. close an
                # upload in a thread): a client that holds its answer finds it counted.
                record()
            await send(message)

        inflight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            record()
