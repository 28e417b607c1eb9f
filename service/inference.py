"""What every inference route does once it has the images: hold a model version, decode, run, map failures.

/classify and the OIP infer route differ only in how images arrive and answers leave; admission
(`Engine.admitted`), the deadline (dynadapter.service.deadlines), the bounded decode pool and the
queue's errors are here once.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter

import numpy as np
from starlette.requests import Request

from dynadapter.service.batching import BatcherClosedError, QueueFullError
from dynadapter.service.deadlines import DeadlineError
from dynadapter.service.disconnect import cancel_on_disconnect
from dynadapter.service.engine import Engine, NonFiniteOutputError
from dynadapter.service.errors import deadline_exceeded, non_finite_output, not_ready, overloaded, too_many_images
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
    input_name: str = "image",
) -> list[ExitResult]:
    """Read the images (`read`), decode and classify them on `engine`, within `timeout_s`; in input order.

    Within the deadline an image may leave with the exit it has (`ExitResult.reason` "deadline"). The
    request is counted in the metrics under `engine`'s model and version, and its latency goes to the
    latency controller. Errors: 504 when reading and decoding do not finish in time or not even the first
    exit can answer in time, 503 when the queue is full or the service stops, 400 `non_finite_output`
    naming `input_name` when an image drives the model to non-finite scores, 499 (ClientDisconnect) when
    the client goes away while its images are classified (they are cancelled), and whatever `read` or
    decoding raise.
    """
    request.scope.setdefault("state", {})[LABEL_KEY] = (engine.name, engine.version)
    start = perf_counter()
    deadline = start + timeout_s
    async with engine.admitted():
        try:
            images = await asyncio.wait_for(_prepare(engine, read), timeout_s)
            return await cancel_on_disconnect(request.receive, engine.classify_all(images, policy, deadline))
        except NonFiniteOutputError as err:
            raise non_finite_output(input_name, err.index) from None
        except (asyncio.TimeoutError, DeadlineError):
            raise deadline_exceeded(timeout_s) from None
        except QueueFullError as err:
            raise overloaded(err.retry_after_s) from None
        except BatcherClosedError:
            raise not_ready() from None
        finally:
            engine.observe_latency(perf_counter() - start)


async def _prepare(engine: Engine, read: Callable[[], Awaitable[Images]]) -> list[np.ndarray]:
    # A place in the bounded decode pool is taken before the body is read, so that the bodies and
    # decodes in memory stay bounded (docs/images.md); decoding runs on the pool, off the event loop.
    async with engine.admit():
        given = await read()
        return list(given) if isinstance(given, np.ndarray) else [await engine.prepare(data) for data in given]
