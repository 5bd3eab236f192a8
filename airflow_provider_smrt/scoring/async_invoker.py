"""An ``invoke(body)`` that scores one payload through InvokeEndpointAsync, for the scoring pipeline.

With it, the async operator's Parquet mode is the batch scoring pipeline itself (same units, codecs,
parts, ``_errors/``, manifest, resume), only each request goes through S3 and InvokeEndpointAsync:

1. the payload is staged at ``<staging_uri>/<sha256 of output_uri and payload>.payload``;
2. InvokeEndpointAsync is called with a deterministic ``InferenceId`` and ``Filename``, and a small
   marker ``<same name>.submitted.json`` records its OutputLocation and FailureLocation;
3. the output and failure objects are polled until one appears, with the one wait loop of
   :mod:`airflow_provider_smrt.async_inference.wait`; the output is returned as the response body, a
   failure object raises :class:`~airflow_provider_smrt.exceptions.ModelInputError` with the head of its
   message (so the pipeline bisects the payload to isolate poison rows, as for real-time scoring).

A retried task finds the marker and polls instead of submitting again; a payload sent twice (the
worker died between submitting and writing the marker) writes the same output key. The staged
payload is deleted once its output has been read; markers are small and kept (an S3 lifecycle rule
on the staging prefix removes them, see docs/async.md). Airflow-free.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from airflow_provider_smrt.async_inference import AsyncInferenceTracker, AsyncInvocation, Watch, poll_sync, wait_sync
from airflow_provider_smrt.async_inference.wait import CANCELLED, FAILURE, SUCCESS
from airflow_provider_smrt.exceptions import ModelInputError, ParameterValidationError, TransportError
from airflow_provider_smrt.invocation import InvokeEndpointAsyncResult
from airflow_provider_smrt.s3 import join_uri
from airflow_provider_smrt.scoring.storage import Storage

Submit = Callable[..., InvokeEndpointAsyncResult]


@dataclass(frozen=True)
class AsyncOutput:
    """The result of one async invocation, shaped like an InvokeEndpoint result."""

    body: bytes
    invoked_production_variant: str | None = None

    def __repr__(self) -> str:
        return f"AsyncOutput(body=<{len(self.body)} bytes>)"


class AsyncInvoker:
    """Scores one payload through S3 and InvokeEndpointAsync, waiting for its output.

    :param submit: ``submit(input_location=, inference_id=, filename=) -> InvokeEndpointAsyncResult``
        (the hook's ``invoke_endpoint_async`` with the endpoint and request parameters bound).
    :param storage: storage with the S3 client.
    :param staging_uri: an ``s3://`` prefix for payloads and markers (outside input and output).
    :param scope: what makes ids unique to this scoring job (e.g. the output URI and configuration hash).
    :param poll_interval: seconds between two checks of a pending invocation.
    :param timeout: seconds to wait for one invocation before giving up (retryable: the retry finds the marker).
    :param cancel: stops waiting when set.
    """

    def __init__(
        self,
        *,
        submit: Submit,
        storage: Storage,
        staging_uri: str,
        scope: str,
        poll_interval: float = 1.0,
        timeout: float = 3_600.0,
        cancel: threading.Event | None = None,
    ) -> None:
        if not staging_uri.startswith("s3://"):
            raise ParameterValidationError(
                f"staging_uri {staging_uri!r} must be an s3:// prefix: InvokeEndpointAsync reads its input from S3"
            )
        self.submit = submit
        self.storage = storage
        self.staging_uri = staging_uri
        self.scope = scope
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.cancel = cancel or threading.Event()
        self.submitted = 0
        self.reused = 0
        self._lock = threading.Lock()

    def __call__(self, body: bytes) -> AsyncOutput:
        digest = hashlib.sha256(self.scope.encode() + b"\0" + body).hexdigest()
        name = digest[:40]
        payload_uri = join_uri(self.staging_uri, f"{name}.payload")
        marker_uri = join_uri(self.staging_uri, f"{name}.submitted.json")
        marker = self._read_marker(marker_uri)
        if marker is None:
            self.storage.write_bytes(payload_uri, body)
            inference_id = f"smrt-{name}"
            # The service's Filename takes 32 characters: 28 of the digest and ".out".
            result = self.submit(input_location=payload_uri, inference_id=inference_id, filename=f"{name[:28]}.out")
            marker = {
                "inference_id": result.inference_id,
                "output_location": result.output_location,
                "failure_location": result.failure_location,
                "input_location": payload_uri,
            }
            self.storage.write_bytes(marker_uri, orjson.dumps(marker))
            with self._lock:
                self.submitted += 1
        else:
            with self._lock:
                self.reused += 1
        output = self._wait(marker)
        self.storage.delete([payload_uri])
        return AsyncOutput(body=output)

    def _read_marker(self, uri: str) -> dict[str, Any] | None:
        if self.storage.stat(uri) is None:
            return None
        marker: dict[str, Any] = orjson.loads(self.storage.read_bytes(uri))
        return marker

    def _wait(self, marker: dict[str, Any]) -> bytes:
        output_uri = str(marker["output_location"])
        invocation = AsyncInvocation(
            output_location=output_uri,
            failure_location=marker.get("failure_location"),
            inference_id=marker.get("inference_id"),
            input=marker.get("input_location"),
        )
        tracker = AsyncInferenceTracker([invocation])
        watch = Watch.for_timeout(tracker, timeout=self.timeout, poke_interval=self.poll_interval)
        outcome = wait_sync(
            watch, self.storage.s3, poll=lambda t, c: poll_sync(t, c, max_parallel=1), cancel=self.cancel
        )
        if outcome.status == SUCCESS:
            return self.storage.read_bytes(output_uri)
        if outcome.status == FAILURE:
            (status,) = tracker.failed
            raise ModelInputError(
                f"async inference {marker['inference_id']} failed (failure object {invocation.failure_location}); "
                "the endpoint's message is kept with the failed rows",
                code="AsyncInferenceFailure",
                original_message=status.failure_message,
            )
        if outcome.status == CANCELLED:
            raise TransportError("stopped while waiting for async inference output", code="Cancelled")
        raise TransportError(
            f"async inference {marker['inference_id']} produced no output within {self.timeout:.0f} s "
            f"(watching {output_uri}); it is polled again on retry",
            code="AsyncInferenceTimeout",
        )
