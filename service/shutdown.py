"""Shutting down without a 500: what a request cut short by the shutdown timeout is answered.

On SIGTERM uvicorn stops accepting connections and gives the requests in flight
`timeout_graceful_shutdown` (the setting shutdown_timeout_s) to finish; then it cancels them, and
an ASGI app that lets the cancellation through gets a 500 and a traceback per request in the log.
`ShutdownGuard` catches that cancellation for a request that has not started its answer yet (a
stalled upload, images still in the batcher: their jobs are cancelled on the way out) and answers
503 `shutting_down` with `Connection: close` and `Retry-After`, logged in one line: a client or a
load balancer retries elsewhere.
"""

import asyncio
import logging
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dynadapter.service.errors import error_response, shutting_down

logger = logging.getLogger(__name__)


@dataclass
class ShutdownFlag:
    """Set by the server when it starts to shut down (service/main.py `serve`)."""

    begun: bool = False


class ShutdownGuard:
    """Pure ASGI middleware: a request cancelled during shutdown, before its answer started, gets 503."""

    def __init__(self, app: ASGIApp, flag: ShutdownFlag) -> None:
        self.app = app
        self.flag = flag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError:
            if started or not self.flag.begun:
                raise  # not ours to answer: half an answer cannot be mended, and others cancel for a reason
            # The cancellation is handled here (Python 3.11+ counts it; 3.10 has no count to undo).
            uncancel = getattr(asyncio.current_task(), "uncancel", None)
            if uncancel is not None:
                uncancel()
            logger.info("shutdown timeout: answered %s %s with 503", scope.get("method"), scope.get("path"))
            error = shutting_down()
            response = error_response(error.status_code, error.code, error.message, error.headers, scope["path"])
            await response(scope, receive, send_tracked)
