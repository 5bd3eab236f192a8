"""A local endpoint: its settings, model, fault dice, capacity slot, async worker pool and counters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smrt.local.faults import Dice, Faults
from airflow_provider_smrt.local.models import Model, build_model

DEFAULT_MAX_PAYLOAD_BYTES = 6_291_456
SERVERLESS_MAX_PAYLOAD_BYTES = 4_000_000
LOCAL_BUCKET = "smrt-local"
_SPEC_KEYS = frozenset(
    {
        "model",
        "model_url",
        "outputs",
        "variants",
        "max_payload_bytes",
        "faults",
        "s3_output_path",
        "s3_failure_path",
        "serverless",
        "stream_parts",
    }
)
_COUNTERS = (
    "requests",
    "invocations_ok",
    "rows_ok",
    "throttled",
    "errors_5xx",
    "model_errors",
    "validation_errors",
    "not_ready",
    "resets",
    "stalls",
    "stream_errors",
    "async_submitted",
    "async_succeeded",
    "async_failed",
)


@dataclass
class Stats:
    """Counters of one endpoint (reset with ``DELETE /_local/endpoints/{name}/stats``)."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    concurrent: int = 0
    max_concurrent: int = 0
    first_arrival: float | None = None
    last_response: float | None = None
    last_request_headers: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, amount: int = 1) -> None:
        """Increase a counter."""
        with self.lock:
            self.counters[name] += amount

    def arrived(self) -> None:
        """An invocation request arrived."""
        with self.lock:
            self.counters["requests"] += 1
            if self.first_arrival is None:
                self.first_arrival = time.monotonic()

    def responded(self) -> None:
        """An invocation response was sent (or the socket closed)."""
        with self.lock:
            self.last_response = time.monotonic()

    @contextmanager
    def in_service(self) -> Iterator[None]:
        """Count the requests being served at once."""
        with self.lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            yield
        finally:
            with self.lock:
                self.concurrent -= 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain JSON."""
        with self.lock:
            busy = 0.0
            if self.first_arrival is not None and self.last_response is not None:
                busy = max(0.0, self.last_response - self.first_arrival)
            return {
                **self.counters,
                "max_concurrent": self.max_concurrent,
                "busy_seconds": round(busy, 6),
                # time.monotonic() of the busy window's ends (CLOCK_MONOTONIC: comparable between processes
                # of one machine, e.g. to measure a client's CPU inside the window); None before any request
                "first_arrival_monotonic": self.first_arrival,
                "last_response_monotonic": self.last_response,
                "last_request_headers": dict(self.last_request_headers),
            }


class Endpoint:
    """One local endpoint, built from a control-API spec (see ``docs/local-stack.md``)."""

    def __init__(self, *, name: str, spec: dict[str, Any]) -> None:
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise ValueError(
                f"unknown endpoint setting(s): {', '.join(unknown)}; known: {', '.join(sorted(_SPEC_KEYS))}"
            )
        self.name = name
        self.model_name = str(spec.get("model", "sum"))
        self.model: Model = build_model(
            model=self.model_name, outputs=spec.get("outputs"), model_url=spec.get("model_url")
        )
        self.model_url: str | None = spec.get("model_url")
        self.outputs: list[str] | None = spec.get("outputs")
        variants = spec.get("variants") or {"AllTraffic": 1.0}
        if not isinstance(variants, dict) or not all(isinstance(w, (int, float)) and w >= 0 for w in variants.values()):
            raise ValueError("variants must map variant names to non-negative weights")
        if sum(variants.values()) <= 0:
            raise ValueError("at least one variant needs a positive weight")
        self.variants: dict[str, float] = {str(k): float(v) for k, v in variants.items()}
        default_max = SERVERLESS_MAX_PAYLOAD_BYTES if spec.get("serverless") else DEFAULT_MAX_PAYLOAD_BYTES
        self.max_payload_bytes = int(spec.get("max_payload_bytes") or default_max)
        self.stream_parts = max(1, int(spec.get("stream_parts") or 4))
        self.s3_output_path = str(spec.get("s3_output_path") or f"s3://{LOCAL_BUCKET}/async-output/{name}").rstrip("/")
        self.s3_failure_path = str(spec.get("s3_failure_path") or f"s3://{LOCAL_BUCKET}/async-failures/{name}").rstrip(
            "/"
        )
        self.created = time.monotonic()
        self.stats = Stats()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.faults = Faults()
        self.dice = Dice(seed=None)
        self.capacity: threading.Semaphore | None = None
        self.set_faults(spec.get("faults"), merge=False)

    def set_faults(self, data: dict[str, Any] | None, *, merge: bool = True) -> None:
        """Replace (or merge into) the fault settings; a new seed restarts the dice."""
        faults = Faults.from_dict(data, base=self.faults if merge else None)
        with self._lock:
            old = self.faults
            self.faults = faults
            if not merge or (data and "seed" in data):
                self.dice = Dice(seed=faults.seed)
            if not merge or faults.capacity != old.capacity:
                self.capacity = threading.Semaphore(faults.capacity) if faults.capacity else None
            if self._executor is not None and faults.async_capacity != old.async_capacity:
                self._executor.shutdown(wait=False)
                self._executor = None

    def async_executor(self) -> ThreadPoolExecutor:
        """The pool processing async invocations (``async_capacity`` at once)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.faults.async_capacity, thread_name_prefix=f"async-{self.name}"
                )
            return self._executor

    def not_ready(self) -> bool:
        """True while the endpoint is within ``model_not_ready_seconds`` of its creation (or the container is down)."""
        if time.monotonic() - self.created < self.faults.model_not_ready_seconds:
            return True
        ping = getattr(self.model, "ping", None)
        return bool(ping is not None and not ping())

    def pick_variant(self, target: str | None) -> str:
        """The target variant if known, else one chosen by weight."""
        if target and target in self.variants:
            return target
        return self.dice.choose({k: v for k, v in self.variants.items() if v > 0})

    def describe(self) -> dict[str, Any]:
        """The endpoint's settings as plain JSON."""
        return {
            "name": self.name,
            "model": self.model_name,
            "model_url": self.model_url,
            "outputs": self.outputs,
            "variants": self.variants,
            "max_payload_bytes": self.max_payload_bytes,
            "stream_parts": self.stream_parts,
            "s3_output_path": self.s3_output_path,
            "s3_failure_path": self.s3_failure_path,
            "faults": self.faults.to_dict(),
        }

    def close(self) -> None:
        """Stop the async worker pool (queued work is dropped)."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None


class Registry:
    """The endpoints of a server, by name."""

    def __init__(self) -> None:
        self._endpoints: dict[str, Endpoint] = {}
        self._lock = threading.Lock()

    def put(self, name: str, spec: dict[str, Any]) -> Endpoint:
        """Create or replace an endpoint (fresh stats)."""
        endpoint = Endpoint(name=name, spec=spec)
        with self._lock:
            old = self._endpoints.get(name)
            self._endpoints[name] = endpoint
        if old is not None:
            old.close()
        return endpoint

    def get(self, name: str) -> Endpoint | None:
        """The endpoint called ``name``, if any."""
        with self._lock:
            return self._endpoints.get(name)

    def delete(self, name: str) -> bool:
        """Remove an endpoint; False if there was none."""
        with self._lock:
            endpoint = self._endpoints.pop(name, None)
        if endpoint is not None:
            endpoint.close()
        return endpoint is not None

    def names(self) -> list[str]:
        """The endpoint names."""
        with self._lock:
            return sorted(self._endpoints)

    def close(self) -> None:
        """Close every endpoint."""
        with self._lock:
            endpoints = list(self._endpoints.values())
        for endpoint in endpoints:
            endpoint.close()
