"""The FastAPI app: `create_app` builds it, `serve` runs it with uvicorn.

Nothing is loaded at import time; the model is verified, its sessions opened and the micro-batcher
started in the lifespan handler, and warm-up runs in the background while /readyz answers 503.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from dynadapter.contract.images import pil_pixel_limit
from dynadapter.contract.model_repository import ModelLoadError, load_model
from dynadapter.service.deps import ServiceState
from dynadapter.service.engine import Engine
from dynadapter.service.errors import install_error_handlers
from dynadapter.service.metrics import ServiceMetrics
from dynadapter.service.middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware
from dynadapter.service.routes import classify, health, metrics, models
from dynadapter.service.segment_runner import select_providers
from dynadapter.service.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app (routes, error handlers, middleware, its own metrics registry); load nothing."""
    settings = settings or Settings()
    state = ServiceState(settings=settings, metrics=ServiceMetrics())
    app = FastAPI(
        title="dyn-adapter",
        summary="Early-exit ViT classification: each image stops at the first confident exit.",
        lifespan=_lifespan,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last, so outermost: it also sees the 413s answered by the body limit.
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics, model_label=state.model_label, path="/classify")
    for module in (classify, models, health, metrics):
        app.include_router(module.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    engine = Engine.load(state.settings, state.metrics)  # ModelLoadError: the app refuses to start
    state.engine = engine
    engine.start()
    warming = asyncio.create_task(_warm_up(state, engine))
    try:
        with pil_pixel_limit(state.settings.max_pixels):
            yield
    finally:
        state.ready = False
        warming.cancel()
        await engine.stop()
        state.engine = None


async def _warm_up(state: ServiceState, engine: Engine) -> None:
    try:
        await asyncio.to_thread(engine.warm_up)
    except Exception:  # a model that cannot run stays unready; /readyz keeps saying so
        logger.exception("warm-up failed; the service stays not ready")
        return
    state.ready = True
    logger.info("model %s warmed up and ready", engine.name)


def serve(settings: Settings) -> None:
    """Run the service in this process with uvicorn, until SIGINT/SIGTERM.

    One worker per container is the supported layout: the metrics, the batch queue and the ONNX
    sessions live in this process, so scale out with more containers, not more workers. On
    shutdown, requests in flight get `shutdown_timeout_s` to finish.
    """
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Check the repository and the providers before uvicorn starts, so that a model that cannot
        # be served is one clear line rather than a lifespan traceback.
        load_model(settings.model_repo, settings.model_name, settings.model_version)
        select_providers(settings.providers)
    except ModelLoadError as err:
        raise SystemExit(f"dynadapter serve: cannot load the model: {err}") from None
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
