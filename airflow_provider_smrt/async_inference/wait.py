"""Waiting for async invocations: the one loop of poll, verdict and pause, and the one reading of its outcome.

Used by every waiter: the sensor's poke (:func:`verdict` after one poll), the trigger
(:func:`wait_async`), the invoke operator's synchronous wait (:func:`wait_sync`), the Parquet-mode
invoker (:func:`wait_sync` with a ``cancel`` event), and the ``execute_complete`` of the sensor and
the operator (:func:`outcome_event` of the trigger's event).

After each poll the :class:`Watch` decides: more failures than ``max_failures`` end with ``failure``,
every invocation done ends with ``success``, otherwise wait ``poke_interval``. A transient S3 error
(already retried per request) backs off exponentially up to two minutes; a non-retryable one is raised.
Once the deadline passes there is one last poll, then ``timeout``. Airflow-free.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_provider_smrt.async_inference.poll import poll_async, poll_sync
from airflow_provider_smrt.async_inference.tracker import AsyncInferenceTracker
from airflow_provider_smrt.exceptions import AsyncInferenceFailedError, InvocationError, SmrtError

#: The longest pause between polls after transient S3 errors.
MAX_ERROR_BACKOFF_SECONDS = 120.0

SUCCESS, FAILURE, TIMEOUT, ERROR, CANCELLED = "success", "failure", "timeout", "error", "cancelled"

class Log(Protocol):
    """What the waiters log through: a :class:`logging.Logger`, or an Airflow task's ``self.log``."""

    def info(self, msg: str, /, *args: Any) -> object: ...

    def warning(self, msg: str, /, *args: Any) -> object: ...


PollSync = Callable[[AsyncInferenceTracker, Any], None]
PollAsync = Callable[[AsyncInferenceTracker, Any], Awaitable[None]]


@dataclass(frozen=True)
class WaitOutcome:
    """How a wait ended: ``status`` (success | failure | timeout | error | cancelled) and a message.

    :param failures: with ``failure``: the failed invocations (their dicts, with the head of each message).
    """

    status: str
    message: str
    failures: list[dict[str, Any]] = field(default_factory=list)

    def event(self, tracker: AsyncInferenceTracker, *, per_invocation: bool = True) -> dict[str, Any]:
        """The trigger's event payload (JSON-serialisable).

        Always the counts (``summary``), the first failed invocations (``first_failures``, without their
        messages) and the S3 effort; with ``per_invocation`` also one status dict per invocation
        (``invocations``): leave it out when the invocations came from a ledger, so the event stays small
        whatever their number.
        """
        payload: dict[str, Any] = {
            "status": self.status,
            "message": self.message,
            "summary": tracker.summary(),
            "first_failures": tracker.first_failures(),
            "requests": tracker.requests,
            "polls": tracker.polls,
        }
        if per_invocation:
            payload["invocations"] = tracker.to_dicts()
        if self.status == FAILURE:
            payload["failures"] = self.failures
        return payload


def verdict(tracker: AsyncInferenceTracker, max_failures: int) -> WaitOutcome | None:
    """After a poll: ``failure`` (too many failed), ``success`` (all done), or None (keep waiting)."""
    if len(tracker.failed) > max_failures:
        error = tracker.failure_error()
        return WaitOutcome(FAILURE, str(error), failures=error.failures)
    if tracker.done:
        return WaitOutcome(SUCCESS, f"{len(tracker.succeeded)} succeeded, {len(tracker.failed)} failed (tolerated)")
    return None


def timed_out(tracker: AsyncInferenceTracker) -> WaitOutcome:
    pending = tracker.pending
    shown = ", ".join(str(s.invocation.inference_id) for s in pending[:5])
    return WaitOutcome(
        TIMEOUT, f"timed out with {len(pending)} invocation(s) still pending (e.g. {shown}): {tracker.summary()}"
    )


@dataclass
class Watch:
    """The decisions of one wait; :func:`wait_sync` and :func:`wait_async` only poll and sleep.

    :param tracker: the invocations (keep it across polls: finished locations are not polled again).
    :param poke_interval: seconds between polls.
    :param max_failures: failed invocations tolerated.
    :param deadline: the absolute give-up time (epoch seconds, ``time.time()``); None: wait forever.
    :param log: where progress and transient errors are reported.
    """

    tracker: AsyncInferenceTracker
    poke_interval: float
    max_failures: int = 0
    deadline: float | None = None
    log: Log | None = None
    errors: int = 0
    #: The deadline passed: one last poll, then a timeout.
    final: bool = False

    @classmethod
    def for_timeout(cls, tracker: AsyncInferenceTracker, *, timeout: float | None, **kwargs: Any) -> Watch:
        return cls(tracker, deadline=None if timeout is None else time.time() + timeout, **kwargs)

    def next(self, error: InvocationError | None = None) -> WaitOutcome | float:
        """After a poll (that failed with ``error``, if given): the outcome, or seconds to sleep before the next."""
        if error is not None:
            if not error.retryable:
                raise error
            if self.final:
                return timed_out(self.tracker)
            self.errors += 1
            pause = min(MAX_ERROR_BACKOFF_SECONDS, self.poke_interval * 2 ** min(self.errors, 6))
            if self.log is not None:
                self.log.warning("transient S3 error (%s); polling again in up to %.0fs", error.code, pause)
            return self.clip(random.uniform(pause / 2, pause))
        self.errors = 0
        outcome = verdict(self.tracker, self.max_failures)
        if outcome is not None:
            return outcome
        if self.final:
            return timed_out(self.tracker)
        if self.log is not None:
            self.log.info("waiting for async results: %s", self.tracker.summary())
        return self.clip(self.poke_interval)

    def clip(self, seconds: float) -> float:
        """``seconds``, or less when the deadline is nearer (0 once it has passed)."""
        if self.deadline is None:
            return seconds
        return max(0.0, min(seconds, self.deadline - time.time()))

    def woke(self) -> None:
        """After the pause: is the next poll the last one?"""
        self.final = self.deadline is not None and time.time() >= self.deadline


def wait_sync(
    watch: Watch, client: Any, *, poll: PollSync = poll_sync, cancel: threading.Event | None = None
) -> WaitOutcome:
    """Poll with a boto3 client until ``watch`` decides; ``cancel`` cuts a pause short (``cancelled``)."""
    sleeper = cancel or threading.Event()
    while True:
        try:
            poll(watch.tracker, client)
            step = watch.next()
        except InvocationError as err:
            step = watch.next(err)
        if isinstance(step, WaitOutcome):
            return step
        if step > 0 and sleeper.wait(step):
            return WaitOutcome(CANCELLED, "stopped while waiting for async results")
        watch.woke()


async def wait_async(watch: Watch, client: Any, *, poll: PollAsync = poll_async) -> WaitOutcome:
    """:func:`wait_sync` with an aiobotocore client and an ``asyncio`` sleep."""
    while True:
        try:
            await poll(watch.tracker, client)
            step = watch.next()
        except InvocationError as err:
            step = watch.next(err)
        if isinstance(step, WaitOutcome):
            return step
        if step > 0:
            await asyncio.sleep(step)
        watch.woke()


def outcome_event(
    event: Mapping[str, Any] | None,
    *,
    log: Log,
    timeout_error: Callable[[str], BaseException],
) -> Mapping[str, Any]:
    """Read a wait's outcome (the trigger's event, or :meth:`WaitOutcome.event`): the ``success`` event, or raise.

    ``failure`` raises :class:`AsyncInferenceFailedError`, ``timeout`` raises ``timeout_error(message)``
    (Airflow's sensor timeout, so the task is not retried into the same wait), anything else
    :class:`SmrtError`. Tolerated failures are logged by inference id and input, never by their message.
    """
    if not event:
        raise SmrtError("the async inference trigger returned no event")
    status = event.get("status")
    message = str(event.get("message"))
    if status == SUCCESS:
        if "invocations" in event:
            failed = [entry for entry in event["invocations"] if entry.get("status") == "failed"]
        else:
            failed = list(event.get("first_failures") or [])
        for entry in failed:
            log.warning("tolerated failure: inference_id=%s input=%s", entry.get("inference_id"), entry.get("input"))
        shown = len(failed)
        total = int((event.get("summary") or {}).get("failed") or 0)
        if total > shown:
            log.warning("... and %d more tolerated failure(s)", total - shown)
        return event
    if status == FAILURE:
        raise AsyncInferenceFailedError(message, failures=event.get("failures") or [])
    if status == TIMEOUT:
        raise timeout_error(message)
    raise SmrtError(str(event.get("message") or f"unexpected trigger event status {status!r}"))


def outcome_result(
    event: Mapping[str, Any] | None,
    *,
    log: Log,
    timeout_error: Callable[[str], BaseException],
) -> list[dict[str, Any]]:
    """:func:`outcome_event` of an event with per-invocation statuses: those statuses, or raise."""
    checked = outcome_event(event, log=log, timeout_error=timeout_error)
    return list(checked.get("invocations") or [])
