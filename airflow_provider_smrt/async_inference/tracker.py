"""The statuses of InvokeEndpointAsync invocations and the plan of the fewest S3 requests to learn them.

:class:`AsyncInferenceTracker` keeps one :class:`InvocationStatus` per :class:`AsyncInvocation` and plans
each poll (:meth:`~AsyncInferenceTracker.plan`):

* only *pending* invocations are probed: a location found once is never polled again;
* the output and failure keys still pending are grouped by ``(bucket, directory)``; a directory with
  one pending key gets one ``HeadObject``, a directory with several gets one ``ListObjectsV2`` walk
  narrowed to the keys' common prefix, starting just before the first key and stopping after the
  last, so 200 invocations writing under one output path cost one request per poll, not 200.

The requests themselves are made by :mod:`~airflow_provider_smrt.async_inference.poll`. Airflow-free.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_smrt.async_inference.deadlines import service_deadline_seconds
from airflow_provider_smrt.exceptions import AsyncInferenceFailedError, ParameterValidationError
from airflow_provider_smrt.s3 import ObjectInfo, S3Location

#: Failed invocations named in a summary or a trigger event at most (the rest are counted).
FIRST_FAILURES = 10


class InvocationState(str, enum.Enum):
    """Where an async invocation stands."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


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

    def first_failures(self, limit: int = FIRST_FAILURES) -> list[dict[str, Any]]:
        """The first ``limit`` failed invocations: input, inference id, failure location and the error class.

        Never the failure object's message (the container's words): read it from ``failure_location``.
        """
        return [
            {
                "input": status.invocation.input,
                "inference_id": status.invocation.inference_id,
                "failure_location": status.invocation.failure_location,
                "error": AsyncInferenceFailedError.__name__,
            }
            for status in self.failed[:limit]
        ]

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
        """The error describing the failed invocations (the first :data:`FIRST_FAILURES` in the message and
        in ``failures``)."""
        failed = self.failed
        shown = "\n".join(f"  - {status.describe_failure()}" for status in failed[:FIRST_FAILURES])
        more = f"\n  ... and {len(failed) - FIRST_FAILURES} more" if len(failed) > FIRST_FAILURES else ""
        return AsyncInferenceFailedError(
            f"{len(failed)} of {len(self.statuses)} async invocation(s) failed:\n{shown}{more}",
            failures=[status.to_dict() for status in failed[:FIRST_FAILURES]],
        )
