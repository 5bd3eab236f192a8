"""The in-flight request limit of a scoring run: shrinks on throttling, grows back on success (AIMD)."""

from __future__ import annotations

import threading
import time

__all__ = ["AdaptiveLimiter"]


class AdaptiveLimiter:
    """In-flight request limit that shrinks on throttling and grows back on success (AIMD).

    :param limit: the upper bound (the user's ``concurrency``).
    :param decrease: factor applied on throttling, at most once per ``cooldown`` seconds.
    """

    def __init__(self, *, limit: int, decrease: float = 0.7, cooldown: float = 0.25) -> None:
        self.max_limit = limit
        self._limit = float(limit)
        self._decrease = decrease
        self._cooldown = cooldown
        self._last_decrease = 0.0
        self._in_flight = 0
        self._cond = threading.Condition()
        self.min_seen = limit

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return self._in_flight

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for a slot; False if ``stop`` was set first."""
        with self._cond:
            while self._in_flight >= self.limit:
                if stop.is_set():
                    return False
                self._cond.wait(0.05)
            if stop.is_set():
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()

    def on_throttle(self) -> None:
        with self._cond:
            now = time.monotonic()
            if now - self._last_decrease >= self._cooldown:
                self._limit = max(1.0, self._limit * self._decrease)
                self._last_decrease = now
                self.min_seen = min(self.min_seen, self.limit)

    def on_success(self) -> None:
        with self._cond:
            if self._limit < self.max_limit:
                self._limit = min(float(self.max_limit), self._limit + 1.0 / self._limit)
                self._cond.notify()
