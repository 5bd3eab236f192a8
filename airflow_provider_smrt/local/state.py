"""A local endpoint: its settings, model, fault dice, capacity slot, async worker pool and counters."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smrt.local.faults import Dice, Faults
from airflow_provider_smrt.local.models import CsvHeaderModel, Model, build_model
from airflow_provider_smrt.local.wire import ServiceError

DEFAULT_MAX_PAYLOAD_BYTES = 6_291_456
SERVERLESS_MAX_PAYLOAD_BYTES = 4_000_000
LOCAL_BUCKET = "smrt-local"
DEFAULT_SESSION_TTL_SECONDS = 1_200
#: ``mode`` of an endpoint: which invocations it accepts (SageMaker hosts an endpoint either real-time or async).
MODES = ("any", "realtime", "async")
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
        "inference_components",
        "mode",
        "session_ttl_seconds",
        "csv_header",
    }
)
#: ``poison_value``: rows holding it fail at this variant or component only (the endpoint's ``faults`` apply to all).
_TARGET_KEYS = frozenset({"weight", "model", "outputs", "model_url", "poison_value"})
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
    "sessions_opened",
    "sessions_closed",
    "bytes_in",
    "bytes_out",
)
#: How many of the latest real-time requests' InferenceIds the stats keep (``inference_ids``).
RECENT_INFERENCE_IDS = 10_000


@dataclass
class Stats:
    """Counters of one endpoint (reset with ``DELETE /_local/endpoints/{name}/stats``)."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    #: Invocation requests arrived and not answered yet (``concurrent``: those inside the model).
    in_flight: int = 0
    concurrent: int = 0
    max_concurrent: int = 0
    first_arrival: float | None = None
    last_response: float | None = None
    last_request_headers: dict[str, str] = field(default_factory=dict)
    #: The InferenceIds of the latest real-time requests that carried one, oldest first (bounded).
    inference_ids: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_INFERENCE_IDS))
    #: Per production variant that served them: ``requests`` routed to it and ``rows_ok`` its model answered.
    by_variant: dict[str, dict[str, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, amount: int = 1) -> None:
        """Increase a counter."""
        with self.lock:
            self.counters[name] += amount

    def add_for_variant(self, variant: str, name: str, amount: int = 1) -> None:
        """Increase a counter of one production variant (``requests`` or ``rows_ok``)."""
        with self.lock:
            counters = self.by_variant.setdefault(variant, {"requests": 0, "rows_ok": 0})
            counters[name] += amount

    def arrived(self) -> None:
        """An invocation request arrived."""
        with self.lock:
            self.counters["requests"] += 1
            self.in_flight += 1
            if self.first_arrival is None:
                self.first_arrival = time.monotonic()

    def responded(self) -> None:
        """An invocation response was sent (or the socket closed)."""
        with self.lock:
            self.in_flight -= 1
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
                "in_flight": self.in_flight,
                "concurrent": self.concurrent,
                "max_concurrent": self.max_concurrent,
                "busy_seconds": round(busy, 6),
                # time.monotonic() of the busy window's ends (CLOCK_MONOTONIC: comparable between processes
                # of one machine, e.g. to measure a client's CPU inside the window); None before any request
                "first_arrival_monotonic": self.first_arrival,
                "last_response_monotonic": self.last_response,
                "last_request_headers": dict(self.last_request_headers),
                "inference_ids": list(self.inference_ids),
                "by_variant": {name: dict(counters) for name, counters in self.by_variant.items()},
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
        #: The model reads the first line of a CSV body as a header (MLflow's scoring server does).
        self.csv_header = bool(spec.get("csv_header"))
        if self.csv_header:
            self.model = CsvHeaderModel(self.model)
        self.model_url: str | None = spec.get("model_url")
        self.outputs: list[str] | None = spec.get("outputs")
        variants = spec.get("variants") or {"AllTraffic": 1.0}
        if not isinstance(variants, dict):
            raise ValueError("variants must map variant names to weights or to {weight, model, outputs} objects")
        self.variants: dict[str, float] = {}
        #: variant name → its own model (variants without a ``model`` use the endpoint's)
        self.variant_models: dict[str, Model] = {}
        for variant, setting in variants.items():
            weight = setting.get("weight", 1.0) if isinstance(setting, dict) else setting
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise ValueError(f"variant {variant!r}: the weight must be a non-negative number")
            self.variants[str(variant)] = float(weight)
            if isinstance(setting, dict):
                model = _target_model(f"variant {variant!r}", setting)
                if model is not None:
                    self.variant_models[str(variant)] = model
        if sum(self.variants.values()) <= 0:
            raise ValueError("at least one variant needs a positive weight")
        components = spec.get("inference_components") or {}
        if not isinstance(components, dict):
            raise ValueError("inference_components must map component names to {model, outputs} objects")
        #: inference component name → its model (when any are set, every real-time request must name one)
        self.inference_components: dict[str, Model] = {}
        self._component_specs: dict[str, dict[str, Any]] = {}
        for component, setting in components.items():
            model = _target_model(f"inference component {component!r}", setting if isinstance(setting, dict) else {})
            if model is None:
                raise ValueError(f"inference component {component!r} needs a model")
            self.inference_components[str(component)] = model
            self._component_specs[str(component)] = dict(setting)
        self._variant_specs = {str(k): v for k, v in variants.items()}
        self.mode = str(spec.get("mode") or "any")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.session_ttl_seconds = float(spec.get("session_ttl_seconds") or DEFAULT_SESSION_TTL_SECONDS)
        self._sessions: dict[str, float] = {}  # session id -> expiry (time.time())
        default_max = SERVERLESS_MAX_PAYLOAD_BYTES if spec.get("serverless") else DEFAULT_MAX_PAYLOAD_BYTES
        self.max_payload_bytes = int(spec.get("max_payload_bytes") or default_max)
        self.stream_parts = max(1, int(spec.get("stream_parts") or 4))
        self.s3_output_path = str(spec.get("s3_output_path") or f"s3://{LOCAL_BUCKET}/async-output/{name}").rstrip("/")
        self.s3_failure_path = str(spec.get("s3_failure_path") or f"s3://{LOCAL_BUCKET}/async-failures/{name}").rstrip(
            "/"
        )
        self.created = time.monotonic()
        self._not_ready_answers = 0
        self._stream_breaks = 0
        self.stats = Stats()
        self._lock = threading.Lock()
        #: Notified when the faults change or the endpoint closes (wakes the invocations ``hold_after_requests``
        #: holds); ``_hold_arrivals`` counts the invocations that reached the hold.
        self._faults_changed = threading.Condition(self._lock)
        self._closed = False
        self._hold_arrivals = 0
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
            if faults.hold_after_requests is not None and old.hold_after_requests is None:
                self._hold_arrivals = 0  # a new hold counts from now (nothing is held while there is none)
            self._faults_changed.notify_all()

    def wait_while_held(self) -> bool:
        """Block an invocation while the ``hold_after_requests`` fault holds it (it came after the first N);
        False when the endpoint closed meanwhile (a held async request is then dropped, as queued work is)."""
        with self._faults_changed:
            ordinal = self._hold_arrivals
            self._hold_arrivals += 1
            while not self._closed:
                limit = self.faults.hold_after_requests
                if limit is None or ordinal < limit:
                    break
                self._faults_changed.wait()
            return not self._closed

    def async_executor(self) -> ThreadPoolExecutor:
        """The pool processing async invocations (``async_capacity`` at once)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.faults.async_capacity, thread_name_prefix=f"async-{self.name}"
                )
            return self._executor

    def not_ready(self) -> bool:
        """True for the first ``model_not_ready_requests`` requests, while the endpoint is within
        ``model_not_ready_seconds`` of its creation, or while a forwarded container does not answer ``/ping``."""
        if self.faults.model_not_ready_requests:
            with self._lock:
                if self._not_ready_answers < self.faults.model_not_ready_requests:
                    self._not_ready_answers += 1
                    return True
        if time.monotonic() - self.created < self.faults.model_not_ready_seconds:
            return True
        ping = getattr(self.model, "ping", None)
        return bool(ping is not None and not ping())

    def stream_breaks(self) -> bool:
        """Whether this response stream breaks off (``stream_error_after_parts``), counting the breaks for
        ``stream_error_requests`` (only the first N break; 0: every one)."""
        faults = self.faults
        if faults.stream_error_after_parts is None:
            return False
        if not faults.stream_error_requests:
            return True
        with self._lock:
            if self._stream_breaks < faults.stream_error_requests:
                self._stream_breaks += 1
                return True
        return False

    def pick_variant(self, target: str | None) -> str:
        """The target variant; without one, a variant chosen by weight. An unknown one is the service's
        ValidationError."""
        if target:
            if target not in self.variants:
                raise ServiceError(
                    "ValidationError",
                    f"The variant {target} does not exist on endpoint {self.name}; its variants are "
                    f"{', '.join(sorted(self.variants))}.",
                )
            return target
        return self.dice.choose({k: v for k, v in self.variants.items() if v > 0})

    def pick_model(self, variant: str, component: str | None) -> Model:
        """The model answering a real-time request: the inference component's, else the variant's, else the
        endpoint's. With inference components set, the request must name a known one."""
        if self.inference_components:
            if not component:
                raise ServiceError(
                    "ValidationError",
                    f"Endpoint {self.name} hosts inference components: InferenceComponentName is required.",
                )
            model = self.inference_components.get(component)
            if model is None:
                raise ServiceError(
                    "ValidationError",
                    f"Inference component {component} not found on endpoint {self.name}.",
                )
            return model
        return self.variant_models.get(variant, self.model)

    def target_poison(self, variant: str, component: str | None) -> float | None:
        """The ``poison_value`` of the inference component, else of the variant (None: the endpoint's faults')."""
        for setting in (self._component_specs.get(component or "", {}), self._variant_specs.get(variant)):
            if isinstance(setting, dict) and setting.get("poison_value") is not None:
                return float(setting["poison_value"])
        return None

    def open_session(self) -> tuple[str, float]:
        """A new stateful session: its id and expiry (epoch seconds)."""
        session_id = secrets.token_hex(16)
        expiry = time.time() + self.session_ttl_seconds
        with self._lock:
            self._sessions[session_id] = expiry
        self.stats.add("sessions_opened")
        return session_id, expiry

    def check_session(self, session_id: str) -> None:
        """Raise the service's ValidationError unless ``session_id`` is an open session of this endpoint."""
        with self._lock:
            expiry = self._sessions.get(session_id)
            if expiry is not None and expiry < time.time():
                del self._sessions[session_id]
                expiry = None
        if expiry is None:
            raise ServiceError(
                "ValidationError",
                f"Session {session_id} of endpoint {self.name} does not exist or has expired or been closed; "
                "start a new one with SessionId NEW_SESSION.",
            )

    def close_session(self, session_id: str) -> None:
        """End an open session (requests with its id are rejected from now on)."""
        with self._lock:
            closed = self._sessions.pop(session_id, None) is not None
        if closed:
            self.stats.add("sessions_closed")

    def open_sessions(self) -> int:
        """The sessions open now."""
        now = time.time()
        with self._lock:
            return sum(1 for expiry in self._sessions.values() if expiry >= now)

    def describe(self) -> dict[str, Any]:
        """The endpoint's settings as plain JSON."""
        return {
            "name": self.name,
            "model": self.model_name,
            "model_url": self.model_url,
            "outputs": self.outputs,
            "variants": self.variants,
            "variant_models": {k: v for k, v in self._variant_specs.items() if isinstance(v, dict) and "model" in v},
            "inference_components": self._component_specs,
            "mode": self.mode,
            "session_ttl_seconds": self.session_ttl_seconds,
            "csv_header": self.csv_header,
            "max_payload_bytes": self.max_payload_bytes,
            "stream_parts": self.stream_parts,
            "s3_output_path": self.s3_output_path,
            "s3_failure_path": self.s3_failure_path,
            "faults": self.faults.to_dict(),
        }

    def close(self) -> None:
        """Stop the async worker pool (queued and held work is dropped)."""
        with self._lock:
            self._closed = True
            self._faults_changed.notify_all()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None


def _target_model(label: str, setting: dict[str, Any]) -> Model | None:
    """The model of a variant or inference component spec, or ``None`` when it names none."""
    unknown = sorted(set(setting) - _TARGET_KEYS)
    if unknown:
        raise ValueError(f"{label}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_TARGET_KEYS))}")
    if "model" not in setting:
        return None
    return build_model(model=str(setting["model"]), outputs=setting.get("outputs"), model_url=setting.get("model_url"))


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
