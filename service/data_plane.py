"""The data plane: what every inference request goes through, whatever its transport (as MLServer's DataPlane).

/classify and the OIP infer route are codecs over it: they differ only in how images arrive in the
body and how answers leave. The data plane takes no transport object, only plain values and callables
(`Channel`, and the codec's `read`), so a second transport (gRPC) adds a codec, not a path. The order
below is here once:

1. hold the model version (`Engine.admitted`) and a place in the bounded decode pool (`Engine.admit`),
   or 503 at once, *before a byte of the body is read*, so that the bodies in memory stay bounded
   (docs/images.md, dynadapter.service.decoding.peak_bytes);
2. read the body (the codec's `read`) within the route's deadline (`Channel.limit_read`), else 408
   `request_timeout`: a slow client holds its place for no longer;
3. decode and classify within the deadline, narrowed by one the body carries (OIP `timeout`), counted
   from the end of the read; 504 when not even the first exit can answer in time.

When the transport traces the request (dynadapter.service.tracing), the read and the decode are its spans,
and its span gets the model, version and knob; the batcher adds the queue wait and the segment runs.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TypeVar

import numpy as np

from dynadapter.service.batching import BatcherClosedError, QueueFullError
from dynadapter.service.deadlines import DeadlineError
from dynadapter.service.disconnect import cancel_on_disconnect
from dynadapter.service.engine import Engine, NonFiniteOutputError
from dynadapter.service.errors import deadline_exceeded, non_finite_output, not_ready, overloaded, too_many_images
from dynadapter.service.exit_policy import ExitPolicy
from dynadapter.service.schemas import Knob
from dynadapter.service.segment_runner import ExitResult
from dynadapter.service.tracing import annotate, child_span

Images = Sequence[bytes] | np.ndarray  # encoded images, or preprocessed pixels float32 [N, 3, H, W]


@dataclass(frozen=True, kw_only=True)
class Job:
    """What a route reads from a request's body: its images, how to answer them, and the body's own deadline.

    `timeout_s`: seconds from the end of the read (OIP's `timeout`); None: the route's deadline alone.
    `knob`: the request's knob as sent (for its trace; `policy` is what it chose).
    """

    images: Images
    policy: ExitPolicy
    timeout_s: float | None = None
    input_name: str = "image"  # what a non-finite-output error names (OIP: the request's input)
    knob: Knob | None = None


J = TypeVar("J", bound=Job)


@dataclass(frozen=True)
class Channel:
    """How the data plane speaks to the transport of one request (REST: routes/http.py's `channel`).

    `label(model, version)`: the version that serves the request, for the transport's metrics (called
    once, before anything can fail). `limit_read(timeout_s)`: hold the body's read to `timeout_s` seconds
    from now (the transport answers 408 past it). `disconnected()`: returns once the client has gone
    away; awaited only after the body is read.
    """

    label: Callable[[str, str], None]
    limit_read: Callable[[float], None]
    disconnected: Callable[[], Awaitable[None]]


def check_count(count: int, limit: int) -> None:
    """413 `too_many_images` past the per-request limit (the setting max_images_per_request)."""
    if count > limit:
        raise too_many_images(limit)


async def run(
    channel: Channel, engine: Engine, read: Callable[[], Awaitable[J]], timeout_s: float
) -> tuple[J, list[ExitResult]]:
    """Admit the request on `engine`, read its body (`read`), decode and classify its images; in input order.

    `timeout_s`: the route's deadline in seconds from now, known before the body (the setting
    request_timeout_s, or less by a query parameter); it bounds the read too. Within the deadline an image
    may leave with the exit it has (`ExitResult.reason` "deadline"). The request is labelled (`channel.label`)
    with `engine`'s model and version, and its latency goes to the latency controller. Errors: 503 when
    the decode pool or the queue is full (before the body is read) or the service stops, 408 when the body
    does not arrive in time, 504 when decoding does not finish in time or not even the first exit can
    answer in time, 400 `non_finite_output` naming the job's input when an image drives the model to
    non-finite scores, 499 (ClientDisconnect) when the client goes away while its images are classified
    (they are cancelled), and whatever `read` or decoding raise.
    """
    channel.label(engine.name, engine.version)
    annotate({"model": engine.name, "model.version": engine.version})
    start = perf_counter()
    async with engine.admitted():
        try:
            async with engine.admit():
                channel.limit_read(timeout_s)
                with child_span("read"):
                    job = await read()
                _annotate_job(job)
                deadline = start + timeout_s
                if job.timeout_s is not None:
                    own = perf_counter() + job.timeout_s  # counted from the end of the read
                    if own < deadline:  # the body's own governs, and is the one a 504 names
                        deadline, timeout_s = own, job.timeout_s
                with child_span("decode", **{"dynadapter.images": len(job.images)}):
                    images = await asyncio.wait_for(_decode(engine, job.images), deadline - perf_counter())
            # The body is read: from here on the transport can tell when the client goes away.
            work = engine.classify_all(images, job.policy, deadline)
            return job, await cancel_on_disconnect(channel.disconnected(), work)
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


def _annotate_job(job: Job) -> None:
    """The request span's knob (as sent), the thresholds it chose (one per early exit) and its image count."""
    knob = job.knob or Knob()
    annotate(
        {
            "images": len(job.images),
            "mode": knob.mode,
            "threshold": knob.threshold,
            "budget": knob.budget,
            "thresholds": list(job.policy.thresholds),
        }
    )


async def _decode(engine: Engine, images: Images) -> list[np.ndarray]:
    # Decoding runs on the pool, off the event loop; preprocessed pixels need none.
    return list(images) if isinstance(images, np.ndarray) else [await engine.prepare(data) for data in images]
