"""Async invocations of a local endpoint: read the input, run the model off the request thread, write S3.

An accepted request waits in the endpoint's worker pool (``async_capacity`` at once), and while the
``hold_after_requests`` fault holds it, also until that is cleared (the time it waits counts as queued). A
request queued longer than RequestTTLSeconds, or processed longer than InvocationTimeoutSeconds, fails; a
failure writes the error message text to the FailureLocation, a success writes the model output to the
OutputLocation.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    IncompleteReadError,
    ResponseStreamingError,
)

from airflow_provider_smrt.local.models import ModelFailure
from airflow_provider_smrt.local.state import Endpoint

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 21_600
DEFAULT_TIMEOUT_SECONDS = 900
MAX_INLINE_BYTES = 128_000
#: Reads of an S3 input whose body fails in transit (short, or not matching its checksum).
_BODY_READ_ATTEMPTS = 3
_BODY_READ_ERRORS = (FlexibleChecksumError, IncompleteReadError, ResponseStreamingError)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"an s3:// URI needs a bucket and a key: {uri!r}")
    return bucket, key


def poison_inspector(value: float | None, status: int = 400) -> Callable[[np.ndarray], None] | None:
    """A check run on the decoded rows: any row holding ``value`` fails the whole request with ``status``."""
    if value is None:
        return None

    def inspect(features: np.ndarray) -> None:
        poisoned = int((features == value).any(axis=1).sum())
        if poisoned:
            raise ModelFailure(status, f"{poisoned} of {features.shape[0]} rows contain the poison value {value:g}")

    return inspect


@dataclass(frozen=True)
class AsyncJob:
    """One accepted InvokeEndpointAsync request."""

    endpoint: Endpoint
    inference_id: str
    input_location: str | None
    inline_body: bytes | None
    content_type: str | None
    accept: str | None
    custom_attributes: str | None
    ttl_seconds: int
    timeout_seconds: int
    output_location: str
    failure_location: str
    enqueued: float


class AsyncProcessor:
    """Runs :class:`AsyncJob` s against the S3 server; ``s3_factory`` builds a boto3 S3 client on first use."""

    def __init__(self, *, s3_factory: Callable[[], Any] | None) -> None:
        self._s3_factory = s3_factory
        self._s3_client: Any | None = None
        self._lock = threading.Lock()

    @property
    def _s3(self) -> Any | None:
        with self._lock:
            if self._s3_client is None and self._s3_factory is not None:
                self._s3_client = self._s3_factory()
            return self._s3_client

    def submit(self, job: AsyncJob) -> None:
        """Queue ``job`` on its endpoint's worker pool."""
        job.endpoint.stats.add("async_submitted")
        job.endpoint.async_executor().submit(self._run, job)

    def _run(self, job: AsyncJob) -> None:
        endpoint = job.endpoint
        if not endpoint.wait_while_held():
            return
        faults = endpoint.faults
        started = time.monotonic()
        try:
            if started - job.enqueued > job.ttl_seconds * faults.async_limits_scale:
                raise ModelFailure(408, f"Request {job.inference_id} expired: it was queued longer than its TTL.")
            deadline = started + job.timeout_seconds * faults.async_limits_scale
            body = self._read_input(job)
            marker = faults.fail_async_marker
            if marker and marker.encode("utf-8") in body:
                raise ModelFailure(400, "The input contains the failure marker of this endpoint.")
            if faults.async_delay_seconds:
                time.sleep(min(faults.async_delay_seconds, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                raise ModelFailure(408, "Invocation timed out: processing took longer than InvocationTimeoutSeconds.")
            headers = {"X-Amzn-SageMaker-Custom-Attributes": job.custom_attributes} if job.custom_attributes else {}
            prediction = endpoint.model.predict(
                body,
                job.content_type,
                job.accept,
                headers=headers,
                inspect=poison_inspector(faults.poison_value, faults.poison_status),
            )
            if time.monotonic() > deadline:
                raise ModelFailure(408, "Invocation timed out: processing took longer than InvocationTimeoutSeconds.")
            self._write(job.output_location, prediction.body, prediction.content_type)
        except ModelFailure as err:
            self._fail(job, err.message)
            return
        except Exception as err:  # noqa: BLE001 - any failure must land in the FailureLocation
            # botocore's messages name the operation, the status and the checksums, never the body; any
            # other error's text may quote the payload, so only its type is logged.
            detail = f": {err}" if isinstance(err, (BotoCoreError, ClientError)) else ""
            log.warning("async invocation on %s failed: %s%s", endpoint.name, type(err).__name__, detail)
            self._fail(job, f"Internal failure while processing the request: {type(err).__name__}")
            return
        endpoint.stats.add("async_succeeded")
        endpoint.stats.add("rows_ok", prediction.rows)

    def _fail(self, job: AsyncJob, message: str) -> None:
        job.endpoint.stats.add("async_failed")
        try:
            self._write(job.failure_location, message.encode("utf-8"), "text/plain")
        except Exception as err:  # noqa: BLE001 - nothing more to do than to say so
            log.warning("could not write the failure object of %s: %s", job.endpoint.name, type(err).__name__)

    def _read_input(self, job: AsyncJob) -> bytes:
        if job.inline_body is not None:
            return job.inline_body
        location = job.input_location or ""
        if location.startswith("s3://"):
            if self._s3 is None:
                raise RuntimeError("no S3 server configured")
            s3 = self._s3
            bucket, key = split_s3_uri(location)
            # botocore retries the request, not the reading of its body: a body that arrives short or
            # fails its checksum is read again, as the service's own reader would.
            for attempt in range(1, _BODY_READ_ATTEMPTS + 1):
                try:
                    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                    return body
                except s3.exceptions.NoSuchKey as err:
                    raise ModelFailure(400, f"The input location {location} does not exist.") from err
                except _BODY_READ_ERRORS as err:
                    if attempt == _BODY_READ_ATTEMPTS:
                        raise
                    log.warning("reading %s failed (attempt %d): %s; reading it again", location, attempt, err)
        with urllib.request.urlopen(location, timeout=60) as response:
            data: bytes = response.read()
            return data

    def _write(self, location: str, body: bytes, content_type: str) -> None:
        s3 = self._s3
        if s3 is None:
            raise RuntimeError("no S3 server configured")
        bucket, key = split_s3_uri(location)
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
