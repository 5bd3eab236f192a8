"""The counters of one scoring run, shared by the workers, the writer and the job."""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["LATENCY_BOUNDS_MS", "NO_VARIANT", "CallStats", "LatencyHistogram", "RunStats"]

#: Upper edges of the latency buckets in milliseconds: quarter octaves from 1 ms to 2**20 ms (about 17
#: minutes), so a percentile is known to within a factor of 2**0.25 (19 %) in 81 counters.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(2 ** (i / 4) for i in range(81))

#: The variant key of HTTP calls answered without an invoked variant (throttled, failed).
NO_VARIANT = "(none)"


def _floor_us(ms: float) -> float:
    """``ms`` rounded down to the microsecond (down, so a bucket's edge stays in its bucket)."""
    return math.floor(ms * 1000.0) / 1000.0


class LatencyHistogram:
    """Latencies in fixed buckets (:data:`LATENCY_BOUNDS_MS`): constant memory whatever the call count.

    Not thread-safe on its own: :class:`RunStats` updates it under its lock.
    """

    __slots__ = ("count", "counts", "max_ms")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)  # the last one: beyond the last edge
        self.count = 0
        self.max_ms = 0.0

    @staticmethod
    def bucket(ms: float) -> int:
        """The index of the bucket holding a latency of ``ms`` milliseconds."""
        return bisect_left(LATENCY_BOUNDS_MS, ms)

    def add(self, ms: float) -> None:
        self.counts[self.bucket(ms)] += 1
        self.count += 1
        self.max_ms = max(self.max_ms, ms)

    def percentile(self, q: float) -> float | None:
        """The upper edge (ms) of the bucket holding the ``q``-quantile (0 < q <= 1); None without calls.

        The edge is never above the largest latency seen (the last bucket reports that one).
        """
        if self.count == 0:
            return None
        rank = max(1, -(-self.count * q // 1))  # ceil(count * q), at least the first call
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                edge = LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else self.max_ms
                return _floor_us(min(edge, self.max_ms))
        return _floor_us(self.max_ms)  # pragma: no cover - the counts add up to count


@dataclass
class CallStats:
    """The HTTP calls of one invoked variant (or of all): calls, bytes, seconds and their latencies."""

    http_calls: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    latencies: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add(self, *, sent: int, received: int, seconds: float) -> None:
        self.http_calls += 1
        self.bytes_sent += sent
        self.bytes_received += received
        self.seconds += seconds
        self.latencies.add(seconds * 1000.0)

    def summary(self) -> dict[str, int | float | None]:
        return {
            "http_calls": self.http_calls,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "endpoint_seconds": round(self.seconds, 6),
            "latency_p50_ms": self.latencies.percentile(0.50),
            "latency_p95_ms": self.latencies.percentile(0.95),
        }


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
    #: Request bodies encoded by child processes (``encode_processes``); the others by the task's process.
    bodies_offloaded: int = 0
    parts_written: int = 0
    #: checkpoint segments written (see :mod:`~airflow_provider_smrt.scoring.checkpoints`)
    checkpoints_written: int = 0
    #: rows of checkpoints an earlier run left, not scored again
    rows_resumed_from_checkpoints: int = 0
    variants: Counter[str] = field(default_factory=Counter)
    #: part name → (rows scored, rows failed), for the manifest
    part_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Every HTTP call (each attempt of a request, retries included).
    calls: CallStats = field(default_factory=CallStats)
    #: The same calls by invoked variant (:data:`NO_VARIANT` for calls answered without one).
    calls_by_variant: dict[str, CallStats] = field(default_factory=dict)
    #: The same calls by target of ``compare_targets`` (empty without it).
    calls_by_target: dict[str, CallStats] = field(default_factory=dict)
    #: ``time.monotonic()`` when the first call started and the last one ended (None before any call).
    first_call_started: float | None = None
    last_call_ended: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def record_call(
        self,
        *,
        variant: str | None,
        sent: int,
        received: int,
        started: float,
        ended: float,
        target: str | None = None,
    ) -> None:
        """One HTTP call: ``sent`` and ``received`` body bytes, between ``started`` and ``ended`` (monotonic);
        ``target``: the name of its target of ``compare_targets``, if any."""
        seconds = max(0.0, ended - started)
        with self.lock:
            self.calls.add(sent=sent, received=received, seconds=seconds)
            if target is not None:
                by_target = self.calls_by_target.get(target)
                if by_target is None:
                    by_target = self.calls_by_target[target] = CallStats()
                by_target.add(sent=sent, received=received, seconds=seconds)
            by_variant = self.calls_by_variant.get(variant or NO_VARIANT)
            if by_variant is None:
                by_variant = self.calls_by_variant[variant or NO_VARIANT] = CallStats()
            by_variant.add(sent=sent, received=received, seconds=seconds)
            if self.first_call_started is None or started < self.first_call_started:
                self.first_call_started = started
            if self.last_call_ended is None or ended > self.last_call_ended:
                self.last_call_ended = ended

    @property
    def busy_wall_seconds(self) -> float:
        """Wall-clock seconds from the start of the first call to the end of the last one."""
        if self.first_call_started is None or self.last_call_ended is None:
            return 0.0
        return max(0.0, self.last_call_ended - self.first_call_started)
