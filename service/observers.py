"""Observers of the cascade's stages (metrics, live calibration), kept from failing a request.

The micro-batcher hands every stage's output to its observers on the event loop, just before the
images that left there are answered. An observer that raises is logged and skipped, as LitServe's
CallbackRunner does: the answers still go out. The first failure of each kind (observer, exception
type) is logged with its traceback; repeats are counted at DEBUG, so a broken observer cannot flood
the log at the request rate.
"""

import logging
from collections.abc import Callable, Iterable

from dynadapter.service.segment_runner import StageOutput

logger = logging.getLogger(__name__)

StageObserver = Callable[[StageOutput], None]


class StageObservers:
    """The observers subscribed to one batcher's stage seam; `notify` calls each, in subscription order.

    Used on the event loop only (no locking).
    """

    def __init__(self, observers: Iterable[StageObserver] = ()) -> None:
        self._observers = list(observers)
        self._failed: dict[tuple[str, str], int] = {}  # (observer, exception type) -> failures so far

    def subscribe(self, observer: StageObserver) -> None:
        self._observers.append(observer)

    def notify(self, stage: StageOutput) -> None:
        """Give `stage` to every observer; one that raises is logged, never propagated."""
        for observer in self._observers:
            try:
                observer(stage)
            except Exception as err:  # an observer's fault must not become the request's
                self._log(observer, err)

    def _log(self, observer: StageObserver, err: Exception) -> None:
        kind = (getattr(observer, "__qualname__", repr(observer)), type(err).__name__)
        count = self._failed[kind] = self._failed.get(kind, 0) + 1
        if count == 1:
            logger.exception(
                "stage observer %s failed (%s); answers go out, later failures of this kind are logged at DEBUG", *kind
            )
        else:
            logger.debug("stage observer %s failed again (%s, %d times)", kind[0], kind[1], count)
