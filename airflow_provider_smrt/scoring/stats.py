"""The counters of one scoring run, shared by the workers, the writer and the job."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["RunStats"]


@dataclass
class RunStats:
    """Counters of one run (thread-safe through ``lock``)."""

    rows_total: int = 0
    rows_scored: int = 0
    rows_failed: int = 0
    requests: int = 0
    retries: int = 0
    throttles: int = 0
    bisections: int = 0
    #: Rows sent to the oversize (async) endpoint in this run, scored or failed.
    rows_async: int = 0
    parts_written: int = 0
    variants: Counter[str] = field(default_factory=Counter)
    #: part name → (rows scored, rows failed), for the manifest
    part_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)
