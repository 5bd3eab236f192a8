"""The invoke operator's summary (its bounded XCom) and reading its requests back from S3.

The operator returns :func:`submission_summary` (completed by :func:`with_wait` when it waited): counts,
the ledger's URI and the first few failures, the same size for 20 requests or 20,000. The per-request
records live in the ledger object in S3 (:mod:`~airflow_provider_smrt.async_inference.ledger`):
:func:`read_records` returns them as submitted, :func:`read_results` with their current statuses (one
poll). Airflow-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow_provider_smrt.async_inference.ledger import Record, read_ledger
from airflow_provider_smrt.async_inference.poll import poll_sync
from airflow_provider_smrt.async_inference.tracker import AsyncInferenceTracker
from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.retry import RetryPolicy

__all__ = ["is_summary", "read_records", "read_results", "submission_summary", "with_wait"]

#: The keys every summary has (see the operator's documentation).
SUMMARY_KEYS = (
    "endpoint_name",
    "ledger_uri",
    "requests",
    "submitted",
    "resumed",
    "waited",
    "succeeded",
    "failed",
    "pending",
    "first_failures",
    "invocations",
)


def submission_summary(
    *,
    endpoint_name: str,
    ledger_uri: str | None,
    records: Sequence[Record],
    submitted: int,
    resumed: int,
) -> dict[str, Any]:
    """The summary of a submission: counts and the ledger's URI.

    ``invocations`` carries the records only when there is no ledger (one inline body without
    ``ledger_uri``); otherwise it is None and the records are read from the ledger.
    """
    return {
        "endpoint_name": endpoint_name,
        "ledger_uri": ledger_uri,
        "requests": len(records),
        "submitted": submitted,
        "resumed": resumed,
        "waited": False,
        "succeeded": None,
        "failed": None,
        "pending": None,
        "first_failures": [],
        "invocations": None if ledger_uri else [dict(record) for record in records],
    }


def with_wait(summary: Mapping[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` after a wait: the counts and first failures of its outcome (a wait's event)."""
    counts = event.get("summary") or {}
    return {
        **summary,
        "waited": True,
        "succeeded": counts.get("succeeded"),
        "failed": counts.get("failed"),
        "pending": counts.get("pending"),
        "first_failures": list(event.get("first_failures") or []),
    }


def is_summary(value: Any) -> bool:
    """Whether ``value`` is an invoke operator's summary (rather than a list of invocations)."""
    return isinstance(value, Mapping) and "ledger_uri" in value


def read_records(client: Any, source: Mapping[str, Any] | str) -> list[Record]:
    """The submission records of an invoke operator's run, in request order.

    :param client: a boto3 S3 client (e.g. ``S3Hook().get_conn()``).
    :param source: the operator's summary (its XCom), or the ledger's ``s3://`` URI.
    :raises SmrtError: the ledger does not exist or cannot be read.
    """
    if isinstance(source, str):
        return read_ledger(client, source)
    if not is_summary(source):
        raise ParameterValidationError(
            "expected the invoke operator's summary (a dict with 'ledger_uri') or a ledger s3:// URI, "
            f"got {type(source).__name__}"
        )
    if source.get("ledger_uri"):
        return read_ledger(client, str(source["ledger_uri"]))
    return [dict(record) for record in source.get("invocations") or []]


def read_results(
    client: Any, source: Mapping[str, Any] | str, *, retry_policy: RetryPolicy | None = None
) -> list[dict[str, Any]]:
    """Each request's record with its status now: one poll of S3 (a listing per output directory).

    Every record (``input``, ``inference_id``, ``output_location``, ``failure_location``, ``submitted_at``,
    ``request_ttl_seconds``, ``invocation_timeout_seconds``) gets ``status`` (``pending``, ``succeeded``,
    ``failed``), ``output_size``, ``completed_at`` and ``time_to_completion_seconds``; a failed one also
    ``failure_message`` (the head of its failure object).

    :param client: a boto3 S3 client.
    :param source: the operator's summary (its XCom), or the ledger's ``s3://`` URI.
    :param retry_policy: retries of each S3 request (default: the pollers').
    """
    records = read_records(client, source)
    tracker = AsyncInferenceTracker(records)
    poll_sync(tracker, client, retry_policy=retry_policy)
    return [{**record, **status.to_dict()} for record, status in zip(records, tracker.statuses, strict=True)]
