"""The status of InvokeEndpointAsync invocations, read from S3 with the fewest requests.

Airflow-free core shared by :class:`~airflow_provider_smrt.sensors.async_inference.SageMakerAsyncInferenceSensor`
(boto3, :func:`poll_sync`) and :class:`~airflow_provider_smrt.triggers.async_inference.SageMakerAsyncInferenceTrigger`
(aiobotocore, :func:`poll_async`). Both run the same plan made by :class:`AsyncInferenceTracker`:

* only *pending* invocations are probed: a location found once is never polled again;
* the output and failure keys still pending are grouped by ``(bucket, directory)``; a directory with
  one pending key gets one ``HeadObject``, a directory with several gets one ``ListObjectsV2`` walk
  narrowed to the keys' common prefix, starting just before the first key and stopping after the
  last, so 200 invocations writing under one output path cost one request per poll, not 200;
* a failure object is read once, its first :data:`FAILURE_MESSAGE_BYTES` bytes with a ranged GET.

Transient S3 errors are retried by a :class:`~airflow_provider_smrt.retry.RetryPolicy`; anything
else is raised classified (:func:`~airflow_provider_smrt.exceptions.classify_error`).
Object contents other than the head of a failure message are never read, logged or returned.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smrt.exceptions import AsyncInferenceFailedError, ParameterValidationError
from airflow_provider_smrt.retry import RetryPolicy

#: RequestTTLSeconds when the request did not set it (the service default).
DEFAULT_REQUEST_TTL_SECONDS = 21_600
#: InvocationTimeoutSeconds when the request did not set it (the service default).
DEFAULT_INVOCATION_TIMEOUT_SECONDS = 900
#: How much of a failure object is read for its message (one ranged GET).
FAILURE_MESSAGE_BYTES = 4096
#: Retries of one S3 request: transient errors (5xx, SlowDown, connection resets) only.
DEFAULT_S3_RETRY_POLICY = RetryPolicy(max_attempts=5, base_delay=0.2, max_delay=5.0, deadline=60.0)
#: ListObjectsV2 page size.
_PAGE_SIZE = 1000
#: Requests issued at once by one poll (threads for boto3, tasks for aiobotocore).
_MAX_PARALLEL_PROBES = 8


class InvocationState(str, enum.Enum):
    """Where an async invocation stands."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class S3Location:
    """An ``s3://bucket/key`` URI, split."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        """Split an ``s3://bucket/key`` URI; anything else is a :class:`ParameterValidationError`."""
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise ParameterValidationError(f"{uri!r} is not an s3://bucket/key URI")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or not key:
            raise ParameterValidationError(f"{uri!r} is not an s3://bucket/key URI (bucket and key are required)")
        return cls(bucket=bucket, key=key)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def directory(self) -> str:
        """The key's "directory": everything up to and including the last ``/`` ('' at the root)."""
        head, sep, _ = self.key.rpartition("/")
        return head + sep


@dataclass(frozen=True)
class AsyncInvocation:
    """One submitted InvokeEndpointAsync request, as recorded by the operator (its XCom entries).

    :param inference_id: the request's InferenceId.
    :param output_location: the response's OutputLocation (``s3://``).
    :param failure_location: the response's FailureLocation, if the endpoint has one.
    :param input: what was sent: the InputLocation URI, or ``inline:sha256:<hex>`` for a body.
    :param submitted_at: ISO 8601 time of submission (UTC).
    :param request_ttl_seconds: RequestTTLSeconds sent (None: the service default).
    :param invocation_timeout_seconds: InvocationTimeoutSeconds sent (None: the service default).
    """

    output_location: str
    inference_id: str | None = None
    failure_location: str | None = None
    input: str | None = None
    submitted_at: str | None = None
    request_ttl_seconds: int | None = None
    invocation_timeout_seconds: int | None = None

    def __post_init__(self) -> None:
        S3Location.parse(self.output_location)
        if self.failure_location is not None:
            S3Location.parse(self.failure_location)

    @classmethod
    def from_value(cls, value: AsyncInvocation | Mapping[str, Any]) -> AsyncInvocation:
        """Build from an :class:`AsyncInvocation` or a dict (the operator's XCom entry; extra keys ignored)."""
        if isinstance(value, AsyncInvocation):
            return value
        if not isinstance(value, Mapping) or not value.get("output_location"):
            raise ParameterValidationError(
                "each invocation must be a mapping with at least 'output_location' (the operator's XCom entries)"
            )
        names = cls.__dataclass_fields__
        return cls(**{name: value[name] for name in names if value.get(name) is not None})

    @property
    def deadline_seconds(self) -> int:
        """RequestTTLSeconds + InvocationTimeoutSeconds: the longest the service may take to answer."""
        return service_deadline_seconds(self.request_ttl_seconds, self.invocation_timeout_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD or a listing says about an object that exists."""

    size: int
    last_modified: dt.datetime | None = None


@dataclass
class InvocationStatus:
    """The state of one invocation, updated by each poll."""

    invocation: AsyncInvocation
    state: InvocationState = InvocationState.PENDING
    output_size: int | None = None
    completed_at: dt.datetime | None = None
    failure_message: str | None = None

    @property
    def time_to_completion_seconds(self) -> float | None:
        """From ``submitted_at`` to the result object's LastModified, when both are known."""
        if self.completed_at is None or not self.invocation.submitted_at:
            return None
        try:
            submitted = dt.datetime.fromisoformat(self.invocation.submitted_at)
        except ValueError:
            return None
        if submitted.tzinfo is None:
            submitted = submitted.replace(tzinfo=dt.timezone.utc)
        return round(max(0.0, (self.completed_at - submitted).total_seconds()), 3)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: the invocation's fields, then state, output size, time to completion."""
        out = self.invocation.to_dict()
        out.update(
            status=self.state.value,
            output_size=self.output_size,
            completed_at=self.completed_at.isoformat() if self.completed_at else None,
            time_to_completion_seconds=self.time_to_completion_seconds,
        )
        if self.state is InvocationState.FAILED:
            out["failure_message"] = self.failure_message
        return out

    def describe_failure(self) -> str:
        """One line for an error message: inference id, input and the head of the failure message."""
        inv = self.invocation
        message = (self.failure_message or "").strip().replace("\n", " ")
        return (
            f"inference_id={inv.inference_id!r} input={inv.input!r} failure_location={inv.failure_location!r}: "
            f"{message or '(empty failure object)'}"
        )


@dataclass(frozen=True)
class Probe:
    """One S3 request (or one page walk) that answers for ``keys``, all in one bucket and directory.

    ``HeadObject`` when there is one key; otherwise ``ListObjectsV2`` with ``prefix`` (the keys'
    common prefix), ``StartAfter=start_after`` and the walk stopped once past the last key.
    """

    bucket: str
    keys: tuple[str, ...]

    @property
    def is_head(self) -> bool:
        return len(self.keys) == 1

    @property
    def prefix(self) -> str:
        return os.path.commonprefix(list(self.keys))  # noqa: RUF071 - a key prefix, not a path

    @property
    def start_after(self) -> str:
        # Every key >= keys[0] sorts after keys[0][:-1] (a proper prefix of it).
        return self.keys[0][:-1]


@dataclass
class AsyncInferenceTracker:
    """Plans the fewest S3 requests for the invocations still pending and keeps their statuses.

    Keep one tracker across polls (a poke-mode sensor, a trigger) so finished locations are never
    probed again; a new tracker starts from S3 again (a reschedule-mode sensor).

    :param invocations: the invocations to watch (dicts as in the operator's XCom, or :class:`AsyncInvocation`).
    """

    invocations: Iterable[AsyncInvocation | Mapping[str, Any]]
    statuses: list[InvocationStatus] = field(init=False)
    #: S3 requests made so far by :func:`poll_sync` / :func:`poll_async` (pages and GETs included).
    requests: int = field(init=False, default=0)
    polls: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.statuses = [InvocationStatus(AsyncInvocation.from_value(value)) for value in self.invocations]
        self.invocations = [status.invocation for status in self.statuses]

    # -- views -----------------------------------------------------------------------------------

    @property
    def pending(self) -> list[InvocationStatus]:
        return [s for s in self.statuses if s.state is InvocationState.PENDING]

    @property
    def failed(self) -> list[InvocationStatus]:
        return [s for s in self.statuses if s.state is InvocationState.FAILED]

    @property
    def succeeded(self) -> list[InvocationStatus]:
        return [s for s in self.statuses if s.state is InvocationState.SUCCEEDED]

    @property
    def done(self) -> bool:
        """No invocation is pending and every failure message has been read."""
        return not self.pending and not self.unread_failures()

    def unread_failures(self) -> list[InvocationStatus]:
        return [s for s in self.statuses if s.state is InvocationState.FAILED and s.failure_message is None]

    def summary(self) -> dict[str, int]:
        return {
            "total": len(self.statuses),
            "succeeded": len(self.succeeded),
            "failed": len(self.failed),
            "pending": len(self.pending),
        }

    def to_dicts(self) -> list[dict[str, Any]]:
        return [status.to_dict() for status in self.statuses]

    # -- planning --------------------------------------------------------------------------------

    def plan(self) -> list[Probe]:
        """The requests of the next poll: one per (bucket, directory) holding pending keys."""
        groups: dict[tuple[str, str], set[str]] = defaultdict(set)
        for status in self.pending:
            inv = status.invocation
            for uri in (inv.output_location, inv.failure_location):
                if uri:
                    loc = S3Location.parse(uri)
                    groups[(loc.bucket, loc.directory)].add(loc.key)
        return [Probe(bucket=bucket, keys=tuple(sorted(keys))) for (bucket, _), keys in sorted(groups.items())]

    def apply(self, found: Mapping[tuple[str, str], ObjectInfo]) -> None:
        """Update pending invocations from one poll's findings, keyed by ``(bucket, key)``.

        The output wins over the failure object when, oddly, both exist.
        """
        self.polls += 1
        for status in self.pending:
            inv = status.invocation
            out = S3Location.parse(inv.output_location)
            info = found.get((out.bucket, out.key))
            if info is not None:
                status.state = InvocationState.SUCCEEDED
                status.output_size = info.size
                status.completed_at = info.last_modified
                continue
            if inv.failure_location:
                fail = S3Location.parse(inv.failure_location)
                info = found.get((fail.bucket, fail.key))
                if info is not None:
                    status.state = InvocationState.FAILED
                    status.completed_at = info.last_modified

    def failure_error(self) -> AsyncInferenceFailedError:
        """The error describing every failed invocation (up to 10 in the message)."""
        failed = self.failed
        shown = "\n".join(f"  - {status.describe_failure()}" for status in failed[:10])
        more = f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else ""
        return AsyncInferenceFailedError(
            f"{len(failed)} of {len(self.statuses)} async invocation(s) failed:\n{shown}{more}",
            failures=[status.to_dict() for status in failed],
        )


# ---------------------------------------------------------------------------------------------
# Executing a plan


def _is_not_found(err: BaseException) -> bool:
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return False
    code = str((response.get("Error") or {}).get("Code") or "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


def _decode_message(data: bytes) -> str:
    return data[:FAILURE_MESSAGE_BYTES].decode("utf-8", errors="replace")


def _list_kwargs(probe: Probe, token: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"Bucket": probe.bucket, "Prefix": probe.prefix, "MaxKeys": _PAGE_SIZE}
    if token:
        kwargs["ContinuationToken"] = token
    elif probe.start_after:
        kwargs["StartAfter"] = probe.start_after
    return kwargs


def _take_page(probe: Probe, page: Mapping[str, Any], found: dict[tuple[str, str], ObjectInfo]) -> str | None:
    """Record the probe's keys in one listing page; the continuation token, or None when done."""
    wanted = set(probe.keys)
    last = probe.keys[-1]
    passed = False
    for obj in page.get("Contents", ()) or ():
        key = obj["Key"]
        if key in wanted:
            found[(probe.bucket, key)] = ObjectInfo(size=int(obj.get("Size", 0)), last_modified=obj.get("LastModified"))
        if key >= last:
            passed = True
    if passed or not page.get("IsTruncated"):
        return None
    return page.get("NextContinuationToken")


def _head_info(response: Mapping[str, Any]) -> ObjectInfo:
    return ObjectInfo(size=int(response.get("ContentLength", 0)), last_modified=response.get("LastModified"))


def _run_probe_sync(client: Any, probe: Probe, policy: RetryPolicy) -> tuple[dict[tuple[str, str], ObjectInfo], int]:
    found: dict[tuple[str, str], ObjectInfo] = {}
    where = f"s3://{probe.bucket}"
    requests = 0
    if probe.is_head:
        key = probe.keys[0]

        def head() -> Mapping[str, Any] | None:
            nonlocal requests
            requests += 1
            try:
                return client.head_object(Bucket=probe.bucket, Key=key)
            except Exception as err:
                if _is_not_found(err):
                    return None
                raise

        response = policy.call(head, endpoint_name=where)
        if response is not None:
            found[(probe.bucket, key)] = _head_info(response)
        return found, requests
    token: str | None = None
    while True:
        kwargs = _list_kwargs(probe, token)

        def list_page(kwargs: dict[str, Any] = kwargs) -> Mapping[str, Any]:
            nonlocal requests
            requests += 1
            return client.list_objects_v2(**kwargs)

        token = _take_page(probe, policy.call(list_page, endpoint_name=where), found)
        if token is None:
            return found, requests


def _read_failure_sync(client: Any, status: InvocationStatus, policy: RetryPolicy) -> tuple[str, int]:
    loc = S3Location.parse(status.invocation.failure_location or "")
    requests = 0

    def get() -> bytes:
        nonlocal requests
        requests += 1
        try:
            response = client.get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes=0-{FAILURE_MESSAGE_BYTES - 1}")
        except Exception as err:
            if _is_not_found(err):  # deleted since it was seen: say so rather than fail
                return b"(the failure object disappeared before it could be read)"
            raise
        with response["Body"] as body:
            return body.read(FAILURE_MESSAGE_BYTES)

    return _decode_message(policy.call(get, endpoint_name=f"s3://{loc.bucket}")), requests


def poll_sync(tracker: AsyncInferenceTracker, client: Any, *, retry_policy: RetryPolicy | None = None) -> None:
    """Run one poll of ``tracker``'s plan with a boto3 S3 client, then read new failure messages.

    :param tracker: the invocations and their statuses; updated in place.
    :param client: a boto3 S3 client (thread-safe; probes run on up to 8 threads).
    :param retry_policy: retries of each request (default :data:`DEFAULT_S3_RETRY_POLICY`).
    :raises InvocationError: a non-retryable S3 error, or retries exhausted (classified).
    """
    policy = retry_policy or DEFAULT_S3_RETRY_POLICY
    probes = tracker.plan()
    found: dict[tuple[str, str], ObjectInfo] = {}
    if len(probes) <= 1:
        results = [_run_probe_sync(client, probe, policy) for probe in probes]
    else:
        with ThreadPoolExecutor(max_workers=min(_MAX_PARALLEL_PROBES, len(probes))) as pool:
            results = list(pool.map(lambda probe: _run_probe_sync(client, probe, policy), probes))
    for probe_found, requests in results:
        found.update(probe_found)
        tracker.requests += requests
    tracker.apply(found)
    for status in tracker.unread_failures():
        status.failure_message, requests = _read_failure_sync(client, status, policy)
        tracker.requests += requests


async def _run_probe_async(
    client: Any, probe: Probe, policy: RetryPolicy
) -> tuple[dict[tuple[str, str], ObjectInfo], int]:
    found: dict[tuple[str, str], ObjectInfo] = {}
    where = f"s3://{probe.bucket}"
    requests = 0
    if probe.is_head:
        key = probe.keys[0]

        async def head() -> Mapping[str, Any] | None:
            nonlocal requests
            requests += 1
            try:
                return await client.head_object(Bucket=probe.bucket, Key=key)
            except Exception as err:
                if _is_not_found(err):
                    return None
                raise

        response = await policy.call_async(head, endpoint_name=where)
        if response is not None:
            found[(probe.bucket, key)] = _head_info(response)
        return found, requests
    token: str | None = None
    while True:
        kwargs = _list_kwargs(probe, token)

        async def list_page(kwargs: dict[str, Any] = kwargs) -> Mapping[str, Any]:
            nonlocal requests
            requests += 1
            return await client.list_objects_v2(**kwargs)

        token = _take_page(probe, await policy.call_async(list_page, endpoint_name=where), found)
        if token is None:
            return found, requests


async def _read_failure_async(client: Any, status: InvocationStatus, policy: RetryPolicy) -> tuple[str, int]:
    loc = S3Location.parse(status.invocation.failure_location or "")
    requests = 0

    async def get() -> bytes:
        nonlocal requests
        requests += 1
        try:
            response = await client.get_object(
                Bucket=loc.bucket, Key=loc.key, Range=f"bytes=0-{FAILURE_MESSAGE_BYTES - 1}"
            )
        except Exception as err:
            if _is_not_found(err):
                return b"(the failure object disappeared before it could be read)"
            raise
        async with response["Body"] as body:
            return await body.read(FAILURE_MESSAGE_BYTES)

    return _decode_message(await policy.call_async(get, endpoint_name=f"s3://{loc.bucket}")), requests


async def poll_async(tracker: AsyncInferenceTracker, client: Any, *, retry_policy: RetryPolicy | None = None) -> None:
    """The asyncio twin of :func:`poll_sync`, for an aiobotocore S3 client (same plan, same updates)."""
    policy = retry_policy or DEFAULT_S3_RETRY_POLICY
    gate = asyncio.Semaphore(_MAX_PARALLEL_PROBES)

    async def run(probe: Probe) -> tuple[dict[tuple[str, str], ObjectInfo], int]:
        async with gate:
            return await _run_probe_async(client, probe, policy)

    found: dict[tuple[str, str], ObjectInfo] = {}
    for probe_found, requests in await asyncio.gather(*(run(probe) for probe in tracker.plan())):
        found.update(probe_found)
        tracker.requests += requests
    tracker.apply(found)
    for status in tracker.unread_failures():
        status.failure_message, requests = await _read_failure_async(client, status, policy)
        tracker.requests += requests


def service_deadline_seconds(request_ttl_seconds: int | None, invocation_timeout_seconds: int | None) -> int:
    """RequestTTLSeconds + InvocationTimeoutSeconds (service defaults where None)."""
    return (request_ttl_seconds or DEFAULT_REQUEST_TTL_SECONDS) + (
        invocation_timeout_seconds or DEFAULT_INVOCATION_TIMEOUT_SECONDS
    )


def default_timeout_seconds(invocations: Iterable[AsyncInvocation], *, margin: float = 60.0) -> float:
    """How long to wait for ``invocations`` at most: the largest TTL + invocation timeout, plus a margin."""
    deadlines = [inv.deadline_seconds for inv in invocations]
    base = max(deadlines) if deadlines else DEFAULT_REQUEST_TTL_SECONDS + DEFAULT_INVOCATION_TIMEOUT_SECONDS
    return float(base) + margin
