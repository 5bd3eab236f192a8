"""The status of one scoring run: its first fatal error and the stop event every thread checks."""

from __future__ import annotations

import threading

from airflow_provider_smrt.exceptions import ScoringCancelledError

__all__ = ["Coordinator"]


class Coordinator:
    """Status of one run: the first fatal error, and the event every thread checks before new work."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def fail(self, err: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = err
        self.stop.set()

    def cancel(self, reason: str) -> None:
        self.fail(ScoringCancelledError(reason))

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error
