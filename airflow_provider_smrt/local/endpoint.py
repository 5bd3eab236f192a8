"""The local SageMaker Runtime endpoint server: the service's wire protocol plus a ``/_local/`` control API.

``POST /endpoints/{name}/invocations``, ``/async-invocations`` and ``/invocations-response-stream``
answer exactly as botocore's ``sagemaker-runtime`` model expects, so a plain
``boto3.client("sagemaker-runtime", endpoint_url=...)`` works against it. Each invocation is checked as the
service checks it before anything else happens: its SigV4 signature (:mod:`.sigv4`), its body size counted
on the wire, its headers against the service model's rules (:mod:`.validation`), its target variant,
inference component and session. Request and response bodies, CustomAttributes values and credentials are
never logged.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer
from typing import Any

import orjson

from airflow_provider_smrt.local import async_jobs, validation, wire
from airflow_provider_smrt.local.async_routes import AsyncRoutes
from airflow_provider_smrt.local.control import ControlRoutes
from airflow_provider_smrt.local.models import Model, ModelFailure, Prediction
from airflow_provider_smrt.local.sigv4 import SignatureVerifier
from airflow_provider_smrt.local.state import DEFAULT_MAX_PAYLOAD_BYTES, Endpoint, Registry
from airflow_provider_smrt.local.wire import ServiceError

log = logging.getLogger(__name__)

#: The SageMaker request headers recorded in ``last_request_headers`` (never the custom attributes).
RECORDED_HEADERS = (
    "Content-Type",
    "Accept",
    "X-Amzn-SageMaker-Target-Model",
    "X-Amzn-SageMaker-Target-Variant",
    "X-Amzn-SageMaker-Target-Container-Hostname",
    "X-Amzn-SageMaker-Inference-Component",
    "X-Amzn-SageMaker-Enable-Explanations",
    "X-Amzn-SageMaker-Inference-Id",
    "X-Amzn-SageMaker-Session-Id",
)
_MODEL_HEADERS = (*RECORDED_HEADERS, "X-Amzn-SageMaker-Custom-Attributes")
_RESET = object()
#: Set to ``0`` (or ``false``/``no``/``off``) to accept unsigned requests (the default of ``verify_signatures``).
VERIFY_SIGNATURES_ENV = "SMRT_LOCAL_VERIFY_SIGNATURES"
#: The key pair the stack accepts from the start (the one ``smrt-local run`` exports).
DEFAULT_CREDENTIALS: dict[str, str] = {"testing": "testing"}
SESSION_ID_HEADER = "X-Amzn-SageMaker-Session-Id"
NEW_SESSION = "NEW_SESSION"


def verify_signatures_default() -> bool:
    """``True`` unless ``SMRT_LOCAL_VERIFY_SIGNATURES`` is set to 0/false/no/off."""
    return os.environ.get(VERIFY_SIGNATURES_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class EndpointServer(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server on loopback hosting local endpoints.

    :param host: the address to bind (keep it on loopback).
    :param port: the port; 0 picks a free one (see :attr:`url`).
    :param s3_endpoint_url: the S3 server async invocations read from and write to.
    :param default_endpoints: create ``smrt-demo`` (diabetes), ``smrt-sum`` (sum) and ``smrt-llm`` (llm) at start.
    :param verify_signatures: check the SigV4 signature of every invocation (``None``: on unless
        ``SMRT_LOCAL_VERIFY_SIGNATURES=0``); the control API is never signed.
    :param credentials: access key id → secret accepted (default ``testing``/``testing``); more can be
        registered with ``PUT /_local/credentials``.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        s3_endpoint_url: str | None = None,
        default_endpoints: bool = True,
        verify_signatures: bool | None = None,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.registry = Registry()
        self.verifier = SignatureVerifier(
            credentials=DEFAULT_CREDENTIALS if credentials is None else credentials,
            region=wire.REGION,
            enabled=verify_signatures_default() if verify_signatures is None else verify_signatures,
        )
        self.s3_endpoint_url = s3_endpoint_url
        self.async_processor = async_jobs.AsyncProcessor(
            s3_factory=functools.partial(_s3_client, s3_endpoint_url) if s3_endpoint_url else None
        )
        self._thread: threading.Thread | None = None
        if default_endpoints:
            self.registry.put("smrt-demo", {"model": "diabetes"})
            self.registry.put("smrt-sum", {"model": "sum"})
            self.registry.put("smrt-llm", {"model": "llm"})

    @property
    def url(self) -> str:
        """``http://host:port`` of this server."""
        host, port = self.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}"

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection with TCP_NODELAY (else each response waits ~40 ms for a delayed ACK)."""
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets or drops its connection (a killed task, a test's fault) is no server error."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("a client closed its connection (%s)", type(sys.exc_info()[1]).__name__)
            return
        super().handle_error(request, client_address)

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="smrt-local-endpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the listening socket and the async worker pools."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()
        self.registry.close()


def _s3_client(endpoint_url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=wire.REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32, retries={"max_attempts": 3}),
    )


class _Handler(ControlRoutes, AsyncRoutes):
    protocol_version = "HTTP/1.1"
    server_version = "smrt-local"
    wbufsize = 1 << 16  # one send per response; BaseHTTPRequestHandler flushes after each request
    timeout = 300
    server: EndpointServer

    def version_string(self) -> str:
        """The ``Server`` header."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """No access log (it would add nothing but noise; bodies are never logged anyway)."""

    # ---------------------------------------------------------------- routing
    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        try:
            if parts[0] == "endpoints" and len(parts) == 3 and method == "POST":
                kind = {"invocations": "sync", "async-invocations": "async", "invocations-response-stream": "stream"}
                if parts[2] in kind:
                    self._invoke(parts[1], kind[parts[2]])
                    return
            if parts[0] == "_local":
                self._control(method, parts[1:])
                return
            self._drain_body()
            self._send_json(404, {"error": f"no route for {method} {path}"})
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    # ---------------------------------------------------------------- invocations
    def _invoke(self, name: str, kind: str) -> None:
        verifier = self.server.verifier
        try:
            signed = verifier.check_header(self.headers)
        except ServiceError as error:
            self._drain_body()
            self._send_error(error)
            return
        endpoint = self.server.registry.get(name)
        if kind == "async":
            limit = async_jobs.MAX_INLINE_BYTES
        else:
            limit = endpoint.max_payload_bytes if endpoint is not None else DEFAULT_MAX_PAYLOAD_BYTES
        body, size = self._read_body(limit)
        if size <= limit:
            try:
                verifier.verify(signed, method=self.command, raw_path=self.path, headers=self.headers, body=body)
            except ServiceError as error:
                self._send_error(error)
                return
        if endpoint is None:
            self._send_error(wire.endpoint_not_found(name))
            return
        stats = endpoint.stats
        stats.arrived()
        stats.add("bytes_in", size)
        try:
            try:
                if size > limit:
                    raise ServiceError(
                        "ValidationError", f"Request payload size {size} bytes exceeds the limit of {limit} bytes."
                    )
                validation.check_headers(kind, self.headers, extra=_extra_problem)
                self._check_mode(endpoint, kind)
                session = self._check_realtime(endpoint) if kind != "async" else None
            except ServiceError:
                stats.add("validation_errors")
                raise
            if kind == "sync":
                with stats.lock:
                    stats.last_request_headers = {h: v for h in RECORDED_HEADERS if (v := self.headers.get(h))}
                    if inference_id := self.headers.get("X-Amzn-SageMaker-Inference-Id"):
                        stats.inference_ids.append(inference_id)
            if kind == "async":
                if self._front_door(endpoint, check_ready=False) is _RESET:
                    return
                self._submit_async(endpoint, body)
                return
            if session is not None and session != NEW_SESSION and _is_close_request(self.headers, body):
                self._answer_close(endpoint, session)
                return
            if self._front_door(endpoint, check_ready=True) is _RESET:
                return
            variant = endpoint.pick_variant(self.headers.get("X-Amzn-SageMaker-Target-Variant"))
            stats.add_for_variant(variant, "requests")
            model = endpoint.pick_model(variant, self.headers.get("X-Amzn-SageMaker-Inference-Component"))
            accept_header = "Accept" if kind == "sync" else "X-Amzn-SageMaker-Accept"
            component = self.headers.get("X-Amzn-SageMaker-Inference-Component")
            prediction = self._predict(
                endpoint,
                model,
                body,
                self.headers.get("Content-Type"),
                self.headers.get(accept_header),
                poison=endpoint.target_poison(variant, component),
            )
            stats.add_for_variant(variant, "rows_ok", prediction.rows)
            if kind == "sync":
                extra_headers = {}
                if session == NEW_SESSION:
                    session_id, expiry = endpoint.open_session()
                    stamp = datetime.fromtimestamp(expiry, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                    extra_headers["X-Amzn-SageMaker-New-Session-Id"] = f"{session_id}; Expires={stamp}"
                self._answer_sync(endpoint, prediction, variant, extra_headers)
            else:
                self._answer_stream(endpoint, prediction, variant)
        except ServiceError as error:
            self._send_error(error)
        finally:
            stats.responded()

    def _check_mode(self, endpoint: Endpoint, kind: str) -> None:
        """An endpoint is real-time or asynchronous in SageMaker (``mode``; ``any`` accepts both)."""
        if endpoint.mode == "async" and kind != "async":
            raise ServiceError(
                "ValidationError",
                f"Endpoint {endpoint.name} is an asynchronous endpoint: invoke it with InvokeEndpointAsync.",
            )
        if endpoint.mode == "realtime" and kind == "async":
            raise ServiceError(
                "ValidationError",
                f"Endpoint {endpoint.name} is a real-time endpoint: InvokeEndpointAsync needs an endpoint "
                "created with an AsyncInferenceConfig.",
            )

    def _check_realtime(self, endpoint: Endpoint) -> str | None:
        """Reject an unknown target variant, inference component or session; return the SessionId sent."""
        h = self.headers
        target = h.get("X-Amzn-SageMaker-Target-Variant")
        if target:
            endpoint.pick_variant(target)
        endpoint.pick_model(target or "", h.get("X-Amzn-SageMaker-Inference-Component"))
        session = h.get(SESSION_ID_HEADER)
        if session and session != NEW_SESSION:
            endpoint.check_session(session)
        return session or None

    def _answer_close(self, endpoint: Endpoint, session: str) -> None:
        """Close a stateful session: the service's ``X-Amzn-SageMaker-Closed-Session-Id`` answer."""
        endpoint.close_session(session)
        headers = {
            "Content-Type": "application/json",
            "x-Amzn-Invoked-Production-Variant": self.headers.get("X-Amzn-SageMaker-Target-Variant")
            or next(iter(endpoint.variants)),
            "X-Amzn-SageMaker-Closed-Session-Id": session,
        }
        self._send(200, orjson.dumps({"closed_session_id": session}), headers)

    def _front_door(self, endpoint: Endpoint, *, check_ready: bool) -> object | None:
        """Faults decided before the model: reset, stall, not ready, throttle, 5xx."""
        faults, dice, stats = endpoint.faults, endpoint.dice, endpoint.stats
        if dice.hit(faults.reset_rate):
            stats.add("resets")
            self._reset()
            return _RESET
        if faults.stall_seconds and dice.hit(faults.stall_rate):
            stats.add("stalls")
            time.sleep(faults.stall_seconds)
        if check_ready and endpoint.not_ready():
            stats.add("not_ready")
            raise ServiceError("ModelNotReadyException", f"Model for endpoint {endpoint.name} is not ready yet.")
        if dice.hit(faults.throttle_rate):
            stats.add("throttled")
            raise ServiceError("ThrottlingException", None)
        if dice.hit(faults.error_5xx_rate):
            stats.add("errors_5xx")
            messages = {
                "ServiceUnavailable": "The service is unavailable. Try again later.",
                "InternalFailure": "An internal error occurred. Try again later.",
                "InternalDependencyException": "An internal dependency failed. Try again later.",
            }
            raise ServiceError(faults.error_5xx_code, messages[faults.error_5xx_code])
        return None

    def _predict(
        self,
        endpoint: Endpoint,
        model: Model,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        *,
        poison: float | None = None,
    ) -> Prediction:
        """Take a capacity slot, wait while held and the latency, run the model; model failures become ModelError.

        ``poison``: the target variant's or component's poison value (else the endpoint's faults').
        """
        faults, stats = endpoint.faults, endpoint.stats
        slot = endpoint.capacity
        if slot is not None:
            slot.acquire()
        try:
            with stats.in_service():
                endpoint.wait_while_held()
                delay_ms = faults.latency_ms + endpoint.dice.uniform(faults.latency_jitter_ms)
                if delay_ms > 0:
                    time.sleep(delay_ms / 1000.0)
                headers = {h: v for h in _MODEL_HEADERS if (v := self.headers.get(h))}
                return model.predict(
                    body,
                    content_type,
                    accept,
                    headers=headers,
                    inspect=async_jobs.poison_inspector(
                        poison if poison is not None else faults.poison_value, faults.poison_status
                    ),
                )
        except ModelFailure as failure:
            stats.add("model_errors")
            raise wire.model_error(
                endpoint_name=endpoint.name, original_status=failure.status, original_message=failure.message
            ) from failure
        finally:
            if slot is not None:
                slot.release()

    def _answer_sync(
        self, endpoint: Endpoint, prediction: Prediction, variant: str, extra_headers: dict[str, str]
    ) -> None:
        headers = {
            "Content-Type": prediction.content_type,
            "x-Amzn-Invoked-Production-Variant": variant,
            **extra_headers,
        }
        if prediction.custom_attributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = prediction.custom_attributes
        self._send(200, prediction.body, headers)
        endpoint.stats.add("bytes_out", len(prediction.body))
        endpoint.stats.add("invocations_ok")
        endpoint.stats.add("rows_ok", prediction.rows)


def _extra_problem(member: str, value: str) -> str | None:
    """Rules the model's patterns do not state: an InputLocation must name an object, not only a bucket."""
    if member == "InputLocation":
        _, _, rest = value.partition("://")
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            return "Member must name an object (s3://bucket/key or https://host/path), not only a bucket"
    return None


def _is_close_request(headers: Any, body: bytes) -> bool:
    """A request closing its stateful session: JSON ``{"requestType": "CLOSE"}`` (the convention of
    SageMaker's stateful-session examples; the local endpoint answers it instead of the model)."""
    if "json" not in (headers.get("Content-Type") or "") or len(body) > 1024:
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("requestType") == "CLOSE"
