"""The FastAPI app: `create_app` builds it, `serve` runs it with uvicorn.

Nothing is loaded at import time; the lifespan handler loads the models in the background (verify,
open sessions, start a micro-batcher, warm up, per version) while /readyz answers 503.
"""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from types import FrameType
from urllib.parse import parse_qs

import grpc
import uvicorn
from fastapi import FastAPI
from starlette.types import Scope
from uvicorn.main import STARTUP_FAILURE

from dynadapter.contract.images import pil_pixel_limit
from dynadapter.contract.model_repository import ModelLoadError
from dynadapter.errors import ConfigError
from dynadapter.service.backends.onnxruntime import select_providers
from dynadapter.service.deps import ServiceState
from dynadapter.service.errors import ApiError, install_error_handlers
from dynadapter.service.metrics import ServiceMetrics
from dynadapter.service.middleware import SMALL_BODY_BYTES, BodyReadingMiddleware, ModelLabel, RequestMetricsMiddleware
from dynadapter.service.registry import ModelRegistry, check_repository
from dynadapter.service.routes import classify, health, metrics, models, oip, repository
from dynadapter.service.settings import Settings
from dynadapter.service.shutdown import ShutdownFlag, ShutdownGuard
from dynadapter.service.tracing import Tracing, TracingMiddleware

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, tracing: Tracing | None = None, serve_grpc: bool = False) -> FastAPI:
    """Build the app (routes, error handlers, middleware, its own metrics registry); load nothing.

    `tracing`: where its spans go (dynadapter.service.tracing); None: as the OTEL_* variables say (off unless set).
    `serve_grpc`: the lifespan also serves OIP over gRPC on the setting grpc_port (`serve` asks for it
    unless grpc_port is 0; an app built for a test client listens on no port).
    """
    settings = settings or Settings()
    tracing = tracing or Tracing.from_environment()
    service_metrics = ServiceMetrics()
    state = ServiceState(settings, service_metrics, ModelRegistry(settings, service_metrics))
    app = FastAPI(
        title="dyn-adapter",
        summary="Early-exit ViT classification: each image stops at the first confident exit.",
        lifespan=_lifespan,
    )
    app.state.service = state
    app.state.shutdown = ShutdownFlag()
    app.state.tracing = tracing
    app.state.serve_grpc = serve_grpc
    install_error_handlers(app)
    app.add_middleware(
        BodyReadingMiddleware,
        max_bytes=settings.max_body_bytes,
        small_bytes=min(SMALL_BODY_BYTES, settings.max_body_bytes),
        timeout_s=settings.request_timeout_s,
        is_large=_is_inference,
    )
    # Inside the metrics middleware, so that a request cut short by shutdown is counted as its 503.
    app.add_middleware(ShutdownGuard, flag=app.state.shutdown)
    # Added last, so outermost: it also sees the 413s answered by the body limit.
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=service_metrics,
        is_inference=_is_inference,
        guess=lambda scope: _guess(state, scope),
    )
    # Outermost of all: the request's span covers every answer, the metrics middleware's time included.
    app.add_middleware(TracingMiddleware, tracing=tracing, route_of=_route)
    for module in (classify, models, health, metrics, oip, repository):
        app.include_router(module.router)
    oip.add_schemas(app)
    return app


def _is_inference(path: str) -> bool:
    return path == "/classify" or oip.INFER_PATH.match(path) is not None


def _route(path: str) -> str | None:
    """The route template of an inference path (a span's http.route and name); None for the other routes."""
    if path == "/classify":
        return path
    found = oip.INFER_PATH.match(path)
    if found is None:
        return None
    return "/v2/models/{name}/infer" if found.group(2) is None else "/v2/models/{name}/versions/{version}/infer"


def _guess(state: ServiceState, scope: Scope) -> ModelLabel:
    """The served (model, version) a request names, for requests refused before a route picked one."""
    found = oip.INFER_PATH.match(scope["path"])
    if found:
        name, version = found.group(1), found.group(2)
    else:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        name, version = query.get("model", [None])[0], query.get("version", [None])[0]
    try:
        engine = state.registry.get(name, version)
    except ApiError:  # unknown or not loaded yet: one label for all of them, not one per name tried
        return ("unknown", "")
    return (engine.name, engine.version)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    grpc_server = await _start_grpc(state, app.state.tracing) if app.state.serve_grpc else None
    tasks = [asyncio.create_task(_load(state))]
    if state.settings.repository_poll_s > 0:
        tasks.append(asyncio.create_task(state.registry.poll(state.settings.repository_poll_s)))
    try:
        with pil_pixel_limit(state.settings.max_pixels):
            yield
    finally:
        state.ready = False
        if grpc_server is not None:  # calls in flight finish first, within the shutdown timeout
            await grpc_server.stop(grace=state.settings.shutdown_timeout_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await state.registry.stop()
        app.state.tracing.shutdown()  # exports the spans still buffered


async def _start_grpc(state: ServiceState, tracing: Tracing) -> "grpc.aio.Server":
    # Imported here: an app without gRPC (the tests' clients) never builds the protocol's classes.
    from dynadapter.service.grpc import server

    return await server.start(state, tracing)


async def _load(state: ServiceState) -> None:
    try:
        await state.registry.load_all()
    except Exception:  # a model that cannot be served leaves the service unready; /readyz keeps saying so
        logger.exception("loading the models failed; the service stays not ready")
        return
    freeze_heap()
    state.ready = True
    logger.info("models %s loaded, warmed up and ready", ", ".join(state.registry.names()))


def freeze_heap() -> None:
    """Move every object alive now (the loaded models, the app, the imported modules) out of the garbage
    collector's reach (`gc.freeze`), after collecting what is garbage already.

    A full collection traverses every object the process holds; on the event loop it stalled every request
    for 0.17-0.26 s about once per 1,300 requests, and 0.001 s once the start-up heap was frozen (issue 32,
    measured with gc.callbacks on the demo model). The frozen objects are still freed by reference counting.
    """
    gc.collect()
    gc.freeze()


def serve(settings: Settings) -> None:
    """Run the service in this process with uvicorn, until SIGINT/SIGTERM.

    One worker per container is the supported layout: the metrics, the batch queue and the ONNX
    sessions live in this process, so scale out with more containers, not more workers. On
    shutdown, requests in flight get `shutdown_timeout_s` to finish; one that does not is answered
    503 `shutting_down` with `Connection: close` (dynadapter.service.shutdown).
    """
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Check the repository and the providers before uvicorn starts, so that a model that cannot
        # be served is one clear line rather than a lifespan traceback.
        check_repository(settings)
        select_providers(settings.providers)
    except ModelLoadError as err:
        raise SystemExit(f"dynadapter serve: cannot load the model: {err}") from None
    try:
        tracing = Tracing.from_environment()
    except ConfigError as err:
        raise SystemExit(f"dynadapter serve: {err}") from None
    app = create_app(settings, tracing, serve_grpc=settings.grpc_port > 0)
    server = _Server(uvicorn_config(app, settings), app.state.shutdown)
    with suppress(KeyboardInterrupt):  # as uvicorn.run
        server.run()
    if not server.started:  # as uvicorn.run: the port was taken, or the lifespan failed
        raise SystemExit(STARTUP_FAILURE)


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration of the service: one worker, the settings' address, log level and access log."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        # Off by default: a line per request is event-loop time spent on every request; the
        # request metrics count every request and status, and errors still go to uvicorn.error.
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app when a shutdown begins (so that `ShutdownGuard` knows whose
    cancellation it sees)."""

    def __init__(self, config: uvicorn.Config, flag: ShutdownFlag) -> None:
        super().__init__(config)
        self._flag = flag

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._flag.begun = True
        super().handle_exit(sig, frame)
