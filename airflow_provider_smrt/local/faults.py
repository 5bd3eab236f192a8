"""Fault injection settings of a local endpoint, and the seedable dice that decide them."""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass
from typing import Any

from airflow_provider_smrt.local.wire import FAULT_5XX_CODES

STREAM_ERROR_TYPES = frozenset({"ModelStreamError", "InternalStreamFailure"})


@dataclass(frozen=True)
class Faults:
    """Everything that can go wrong on purpose; all off by default.

    Rates are probabilities per request in [0, 1]. Faults apply before the model runs, in this order:
    reset, stall, model not ready, throttle, 5xx; then the capacity slot, hold, latency, poison rows.
    """

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    capacity: int | None = None
    throttle_rate: float = 0.0
    error_5xx_rate: float = 0.0
    error_5xx_code: str = "ServiceUnavailable"
    model_not_ready_seconds: float = 0.0
    #: The first N real-time requests answer ModelNotReadyException (counted, so tests do not race the clock).
    model_not_ready_requests: int = 0
    poison_value: float | None = None
    #: The container status of a request holding a poison row: 400 (rejected) or e.g. 500 (crashed).
    poison_status: int = 400
    reset_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 0.0
    async_delay_seconds: float = 0.0
    #: Invocations after the first N since it was set (from null) wait, unanswered, until it is set back to
    #: null (a PATCH of the faults; a larger N lets that many more go on): real-time ones in the model
    #: (counted in ``concurrent``), async ones in the queue. A test releases them once it has seen what it
    #: waits for, instead of racing a delay.
    hold_after_requests: int | None = None
    async_capacity: int = 2
    fail_async_marker: str | None = None
    #: Multiplies RequestTTLSeconds and InvocationTimeoutSeconds (botocore forbids a TTL under 60 s; tests shrink it).
    async_limits_scale: float = 1.0
    #: Response stream: after this many PayloadParts, send an exception event instead of the rest.
    stream_error_after_parts: int | None = None
    stream_error_type: str = "ModelStreamError"
    #: Only the first N response streams break off (counted, so tests do not race); 0: every one.
    stream_error_requests: int = 0
    seed: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, base: Faults | None = None) -> Faults:
        """Validate ``data`` and merge it over ``base`` (unknown names and bad values raise ValueError)."""
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        faults = dataclasses.replace(base or cls(), **data)
        faults.validate()
        return faults

    def validate(self) -> None:
        """Raise ValueError when a setting is out of range."""
        for name in ("throttle_rate", "error_5xx_rate", "reset_rate", "stall_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")
        for name in (
            "latency_ms",
            "latency_jitter_ms",
            "model_not_ready_seconds",
            "stall_seconds",
            "async_delay_seconds",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0; got {value!r}")
        if not isinstance(self.model_not_ready_requests, int) or self.model_not_ready_requests < 0:
            raise ValueError(f"model_not_ready_requests must be an integer >= 0; got {self.model_not_ready_requests!r}")
        if self.hold_after_requests is not None and (
            not isinstance(self.hold_after_requests, int)
            or isinstance(self.hold_after_requests, bool)
            or self.hold_after_requests < 0
        ):
            raise ValueError(f"hold_after_requests must be an integer >= 0 or null; got {self.hold_after_requests!r}")
        if not isinstance(self.poison_status, int) or not 400 <= self.poison_status <= 599:
            raise ValueError(f"poison_status must be an HTTP error status (400-599); got {self.poison_status!r}")
        if not isinstance(self.stream_error_requests, int) or self.stream_error_requests < 0:
            raise ValueError(f"stream_error_requests must be an integer >= 0; got {self.stream_error_requests!r}")
        if self.capacity is not None and (not isinstance(self.capacity, int) or self.capacity < 1):
            raise ValueError(f"capacity must be a positive integer or null; got {self.capacity!r}")
        if not isinstance(self.async_capacity, int) or self.async_capacity < 1:
            raise ValueError(f"async_capacity must be a positive integer; got {self.async_capacity!r}")
        if self.error_5xx_code not in FAULT_5XX_CODES:
            raise ValueError(f"error_5xx_code must be one of {', '.join(sorted(FAULT_5XX_CODES))}")
        if self.stream_error_type not in STREAM_ERROR_TYPES:
            raise ValueError(f"stream_error_type must be one of {', '.join(sorted(STREAM_ERROR_TYPES))}")
        if not isinstance(self.async_limits_scale, (int, float)) or self.async_limits_scale <= 0:
            raise ValueError("async_limits_scale must be > 0")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON."""
        return dataclasses.asdict(self)


class Dice:
    """A thread-safe, seedable random source for fault decisions."""

    def __init__(self, *, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def hit(self, rate: float) -> bool:
        """True with probability ``rate`` (never draws when the rate is 0 or 1)."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        with self._lock:
            return self._rng.random() < rate

    def uniform(self, high: float) -> float:
        """A number in [0, high)."""
        if high <= 0:
            return 0.0
        with self._lock:
            return self._rng.uniform(0.0, high)

    def choose(self, weights: dict[str, float]) -> str:
        """A key of ``weights`` picked in proportion to its weight."""
        names = list(weights)
        if len(names) == 1:
            return names[0]
        with self._lock:
            return self._rng.choices(names, weights=[weights[n] for n in names])[0]
