"""What every inference route does once it has the images: hold a model version, decode, run, map failures.

/classify and the OIP infer route differ only in how images arrive and answers leave; admission
(`Engine.admitted`), the deadline, the bounded decode pool and the queue's errors are here once.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
from starlette.requests import Request

from dynadapter.service.batching import BatcherClosedError, QueueFullError
from dynadapter.service.engine import Engine
from dynadapter.service.errors import deadline_exceeded, not_ready, overloaded, too_many_images
from dynadapter.service.exit_policy import ExitPolicy
from dynadapter.service.middleware import LABEL_KEY
from dynadapter.service.segment_runner import ExitResult

Images = Sequence[bytes] | np.ndarray  # encoded images, or preprocessed pixels float32 [N, 3, H, W]


def check_count(count: int, limit: int) -> None:
    """413 `too_many_images` past the per-request limit (the setting max_images_per_request)."""
    if count > limit:
        raise too_many_images(limit)


async def run(
    request: Request,
    engine: Engine,
    read: Callable[[], Awaitable[Images]],
    policy: ExitPolicy,
    timeout_s: float,
) -> list[ExitResult]:
    """Read the images (`read`), decode and classify them on `engine`, within `timeout_s`; in input order.

    The request is counted in the metrics under `engine`'s model and version. Errors: 504 past the
    deadline, 503 when the queue is full or the service stops, and whatever `read` or decoding raise.
    """
    request.scope.setdefault("state", {})[LABEL_KEY] = (engine.name, engine.version)
    async with engine.admitted():
        try:
            return await asyncio.wait_for(_run(engine, read, policy), timeout_s)
        except asyncio.TimeoutError:
            raise deadline_exceeded(timeout_s) from None


async def _run(engine: Engine, read: Callable[[], Awaitable[Images]], policy: ExitPolicy) -> list[ExitResult]:
    try:
        # A place in the bounded decode pool is taken before the body is read, so that the bodies and
        # decodes in memory stay bounded (docs/images.md); decoding runs on the pool, off the event loop.
        async with engine.admit():
            given = await read()
            images = list(given) if isinstance(given, np.ndarray) else [await engine.prepare(data) for data in given]
        return await engine.classify_all(images, policy)
    except QueueFullError as err:
        raise overloaded(err.retry_after_s) from None
    except BatcherClosedError:
        raise not_ready() from None
