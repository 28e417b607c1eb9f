"""Cancel a request's work when its client goes away (as Triton 23.10+ and LitServe do).

Once a request's body is read, the next ASGI `receive` message is `http.disconnect`, and it comes only
when the client closes the connection (or after the response is sent). Watching for it while the
images wait in the batcher lets the service stop spending segments on answers nobody will read:
cancelling the work cancels the images' jobs, and the batcher drops their rows before the next
segment (dynadapter.service.batching).
"""

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect
from starlette.types import Receive

T = TypeVar("T")


async def cancel_on_disconnect(disconnected: Awaitable[None], work: Awaitable[T]) -> T:
    """`work`'s result; if `disconnected` (the transport's word that the client went away, e.g.
    `http_disconnect`) returns first, `work` is cancelled and `ClientDisconnect` raised (answered 499
    client_closed_request)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected)
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # this request is cancelled itself (server shutdown): so is its work
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientDisconnect()


async def http_disconnect(receive: Receive) -> None:
    """Return once ASGI's `receive` says the client is gone; any other message (none is expected) is
    skipped. Await only once the body has been read: it consumes what `receive` gives."""
    while (await receive())["type"] != "http.disconnect":
        pass
