"""The status of InvokeEndpointAsync invocations, read from S3 with the fewest requests, and waiting for them.

The Airflow-free home of async inference, shared by the sensor, the trigger, the invoke operator and
the Parquet-mode invoker:

* :mod:`~airflow_provider_smrt.async_inference.tracker`: invocations, their statuses and the plan of
  the fewest S3 requests (:class:`AsyncInferenceTracker`);
* :mod:`~airflow_provider_smrt.async_inference.poll`: one poll of that plan (:func:`poll_sync`,
  :func:`poll_async`);
* :mod:`~airflow_provider_smrt.async_inference.wait`: the one wait loop and the reading of its outcome;
* :mod:`~airflow_provider_smrt.async_inference.deadlines`: the service's TTL and invocation timeout;
* :mod:`~airflow_provider_smrt.async_inference.ledger`: the invoke operator's submission records;
* :mod:`~airflow_provider_smrt.async_inference.results`: the operator's bounded summary, and reading
  its records back (:func:`read_records`, :func:`read_results`).
"""

from __future__ import annotations

from airflow_provider_smrt.async_inference.deadlines import (
    DEFAULT_INVOCATION_TIMEOUT_SECONDS,
    DEFAULT_REQUEST_TTL_SECONDS,
    default_timeout_seconds,
    service_deadline_seconds,
)
from airflow_provider_smrt.async_inference.poll import (
    DEFAULT_S3_RETRY_POLICY,
    FAILURE_MESSAGE_BYTES,
    poll_async,
    poll_sync,
)
from airflow_provider_smrt.async_inference.results import read_records, read_results
from airflow_provider_smrt.async_inference.tracker import (
    FIRST_FAILURES,
    AsyncInferenceTracker,
    AsyncInvocation,
    InvocationState,
    InvocationStatus,
    Probe,
)
from airflow_provider_smrt.async_inference.wait import (
    WaitOutcome,
    Watch,
    outcome_event,
    outcome_result,
    verdict,
    wait_async,
    wait_sync,
)
from airflow_provider_smrt.s3 import ObjectInfo, S3Location

__all__ = [
    "DEFAULT_INVOCATION_TIMEOUT_SECONDS",
    "DEFAULT_REQUEST_TTL_SECONDS",
    "DEFAULT_S3_RETRY_POLICY",
    "FAILURE_MESSAGE_BYTES",
    "FIRST_FAILURES",
    "AsyncInferenceTracker",
    "AsyncInvocation",
    "InvocationState",
    "InvocationStatus",
    "ObjectInfo",
    "Probe",
    "S3Location",
    "WaitOutcome",
    "Watch",
    "default_timeout_seconds",
    "outcome_event",
    "outcome_result",
    "poll_async",
    "poll_sync",
    "read_records",
    "read_results",
    "service_deadline_seconds",
    "verdict",
    "wait_async",
    "wait_sync",
]
