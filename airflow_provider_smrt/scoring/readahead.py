"""Iterate a source on a thread of its own, a few items ahead of the consumer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["ReadAhead"]


class ReadAhead:
    """Iterate ``items`` on a thread of its own, ``depth`` items ahead of the consumer.

    Keeps Parquet reads (S3 round trips) off the threads that send requests. An error of the
    source is raised to the consumer; :meth:`close` stops the source and closes it in its own thread.
    """

    _DONE = object()

    def __init__(self, items: Iterable[Any], *, stop: threading.Event, depth: int = 2) -> None:
        self._items = items
        self._stop = stop
        self._closed = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._produce, name="smrt-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        iterator = iter(self._items)
        try:
            for item in iterator:
                if self._stop.is_set() or not self._put(item):
                    break
            self._put(self._DONE)
        except BaseException as err:  # noqa: BLE001 - raised again in the consumer's thread
            self._put(err)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Any:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
