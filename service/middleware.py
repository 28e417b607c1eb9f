"""ASGI middleware around the routes: request-body limit and per-request metrics.

Pure ASGI (not BaseHTTPMiddleware) so that bodies are streamed through untouched.
"""

from collections.abc import Callable
from time import perf_counter

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dynadapter.service.errors import error_response, payload_too_large
from dynadapter.service.metrics import ServiceMetrics


class BodySizeLimitMiddleware:
    """413 for a body over `max_bytes`: at once from Content-Length, else while it streams in.

    The streaming check covers chunked uploads and lying Content-Length headers; its error is
    raised inside the route's body read, so the usual error handlers render it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = payload_too_large(self.max_bytes)
            response = error_response(error.status_code, error.code, error.message, path=scope["path"])
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise payload_too_large(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


ModelLabel = tuple[str, str]  # (model, version) of the metrics
LABEL_KEY = "dynadapter_model"  # the route puts the (model, version) it ran on in scope["state"] under this


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
                model, version = scope.get("state", {}).get(LABEL_KEY, guessed)
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
