"""What every inference route does with a request: admit it, read its body, decode, run, map failures.

/classify and the OIP infer route differ only in how images arrive in the body and how answers leave;
the order below is here once, for every transport (REST now, gRPC later):

1. hold the model version (`Engine.admitted`) and a place in the bounded decode pool (`Engine.admit`),
   or 503 at once, *before a byte of the body is read*, so that the bodies in memory stay bounded
   (docs/images.md, dynadapter.service.decoding.peak_bytes);
2. read the body (the route's `read`) within the route's deadline, else 408 `request_timeout`: a slow
   client holds its place for no longer;
3. decode and classify within the deadline, narrowed by one the body carries (OIP `timeout`), counted
   from the end of the read; 504 when not even the first exit can answer in time.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TypeVar

import numpy as np
from starlette.requests import Request

from dynadapter.service.batching import BatcherClosedError, QueueFullError
from dynadapter.service.deadlines import DeadlineError
from dynadapter.service.disconnect import cancel_on_disconnect
from dynadapter.service.engine import Engine, NonFiniteOutputError
from dynadapter.service.errors import deadline_exceeded, non_finite_output, not_ready, overloaded, too_many_images
from dynadapter.service.exit_policy import ExitPolicy
from dynadapter.service.middleware import LABEL_KEY, read_within
from dynadapter.service.segment_runner import ExitResult

Images = Sequence[bytes] | np.ndarray  # encoded images, or preprocessed pixels float32 [N, 3, H, W]


@dataclass(frozen=True, kw_only=True)
class Job:
    """What a route reads from a request's body: its images, how to answer them, and the body's own deadline.

    `timeout_s`: seconds from the end of the read (OIP's `timeout`); None: the route's deadline alone.
    """

    images: Images
    policy: ExitPolicy
    timeout_s: float | None = None
    input_name: str = "image"  # what a non-finite-output error names (OIP: the request's input)


J = TypeVar("J", bound=Job)


def check_count(count: int, limit: int) -> None:
    """413 `too_many_images` past the per-request limit (the setting max_images_per_request)."""
    if count > limit:
        raise too_many_images(limit)


async def run(
    request: Request, engine: Engine, read: Callable[[], Awaitable[J]], timeout_s: float
) -> tuple[J, list[ExitResult]]:
    """Admit the request on `engine`, read its body (`read`), decode and classify its images; in input order.

    `timeout_s`: the route's deadline in seconds from now, known before the body (the setting
    request_timeout_s, or less by a query parameter); it bounds the read too. Within the deadline an image
    may leave with the exit it has (`ExitResult.reason` "deadline"). The request is counted in the metrics
    under `engine`'s model and version, and its latency goes to the latency controller. Errors: 503 when
    the decode pool or the queue is full (before the body is read) or the service stops, 408 when the body
    does not arrive in time, 504 when decoding does not finish in time or not even the first exit can
    answer in time, 400 `non_finite_output` naming the job's input when an image drives the model to
    non-finite scores, 499 (ClientDisconnect) when the client goes away while its images are classified
    (they are cancelled), and whatever `read` or decoding raise.
    """
    request.scope.setdefault("state", {})[LABEL_KEY] = (engine.name, engine.version)
    start = perf_counter()
    async with engine.admitted():
        try:
            async with engine.admit():
                read_within(request.scope, timeout_s)  # the body middleware answers 408 past it
                job = await read()
                deadline = start + timeout_s
                if job.timeout_s is not None and perf_counter() + job.timeout_s < deadline:
                    deadline, timeout_s = perf_counter() + job.timeout_s, job.timeout_s  # the body's own governs
                images = await asyncio.wait_for(_decode(engine, job.images), deadline - perf_counter())
            # The body is read: the next ASGI message is the client's disconnect, if it goes away.
            work = engine.classify_all(images, job.policy, deadline)
            return job, await cancel_on_disconnect(request.receive, work)
        except NonFiniteOutputError as err:
            raise non_finite_output(job.input_name, err.index) from None
        except (asyncio.TimeoutError, DeadlineError):
            raise deadline_exceeded(timeout_s) from None
        except QueueFullError as err:
            raise overloaded(err.retry_after_s) from None
        except BatcherClosedError:
            raise not_ready() from None
        finally:
            engine.observe_latency(perf_counter() - start)


async def _decode(engine: Engine, images: Images) -> list[np.ndarray]:
    # Decoding runs on the pool, off the event loop; preprocessed pixels need none.
    return list(images) if isinstance(images, np.ndarray) else [await engine.prepare(data) for data in images]
