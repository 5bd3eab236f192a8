"""``SageMakerAsyncInferenceTrigger``: wait in the triggerer for async invocations' output or failure objects."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_smrt.async_inference import AsyncInferenceTracker, poll_async
from airflow_provider_smrt.exceptions import InvocationError

#: The longest pause between polls after transient S3 errors.
_MAX_ERROR_BACKOFF_SECONDS = 120.0


class SageMakerAsyncInferenceTrigger(BaseTrigger):
    """Poll S3 for the results of InvokeEndpointAsync requests and fire exactly one event.

    Each poll makes the fewest S3 requests (one listing per output directory with several pending
    keys, a HEAD otherwise; finished locations are never polled again; see
    :mod:`airflow_provider_smrt.async_inference`). Transient S3 errors back off and retry until the
    deadline. The single event's payload is ``{"status": ..., "message": ..., "invocations": [...],
    "summary": {...}, "requests": n, "polls": n}`` with status ``success`` (every invocation done and
    at most ``max_failures`` failed), ``failure`` (more failed: ``failures`` lists them with the head of
    each failure message), ``timeout`` (the deadline passed) or ``error`` (a non-retryable S3 error).

    :param invocations: the operator's XCom entries (dicts with at least ``output_location``).
    :param aws_conn_id: the Airflow AWS connection.
    :param region_name: the AWS region.
    :param verify: SSL certificate verification.
    :param botocore_config: botocore client configuration (dict).
    :param poke_interval: seconds between polls.
    :param timeout: seconds from now to give up (turned into ``deadline`` at construction).
    :param deadline: the absolute give-up time (epoch seconds); survives a triggerer restart.
    :param max_failures: failed invocations tolerated.
    """

    def __init__(
        self,
        *,
        invocations: list[dict[str, Any]],
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        poke_interval: float = 30.0,
        timeout: float | None = None,
        deadline: float | None = None,
        max_failures: int = 0,
    ) -> None:
        super().__init__()
        self.invocations = [dict(invocation) for invocation in invocations]
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config
        self.poke_interval = float(poke_interval)
        self.timeout = timeout
        if deadline is None and timeout is not None:
            deadline = time.time() + float(timeout)
        self.deadline = deadline
        self.max_failures = max_failures
        AsyncInferenceTracker(self.invocations)  # validate now, in the worker, not in the triggerer

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_smrt.triggers.async_inference.SageMakerAsyncInferenceTrigger",
            {
                "invocations": self.invocations,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "verify": self.verify,
                "botocore_config": self.botocore_config,
                "poke_interval": self.poke_interval,
                "timeout": self.timeout,
                "deadline": self.deadline,
                "max_failures": self.max_failures,
            },
        )

    def _hook(self) -> AwsBaseHook:
        return AwsBaseHook(
            aws_conn_id=self.aws_conn_id,
            client_type="s3",
            region_name=self.region_name,
            verify=self.verify,
            config=self.botocore_config,
        )

    def _event(self, tracker: AsyncInferenceTracker, status: str, message: str, **extra: Any) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "message": message,
                "invocations": tracker.to_dicts(),
                "summary": tracker.summary(),
                "requests": tracker.requests,
                "polls": tracker.polls,
                **extra,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        tracker = AsyncInferenceTracker(self.invocations)
        try:
            event = await self._watch(tracker)
        except asyncio.CancelledError:
            raise  # the triggerer moves or stops this trigger: no event, it will be recreated
        except Exception as err:  # noqa: BLE001 - always end with an event the task can report
            event = self._event(tracker, "error", f"waiting for async results failed: {type(err).__name__}: {err}")
        yield event

    async def _watch(self, tracker: AsyncInferenceTracker) -> TriggerEvent:
        errors = 0
        final = False  # the deadline passed: one last poll, then a timeout event
        async with await self._hook().get_async_conn() as client:
            while True:
                try:
                    await poll_async(tracker, client)
                    errors = 0
                except InvocationError as err:
                    if not err.retryable:
                        return self._event(tracker, "error", f"S3 error while waiting for async results: {err}")
                    if final:
                        return self._timeout(tracker)
                    errors += 1
                    pause = min(_MAX_ERROR_BACKOFF_SECONDS, self.poke_interval * 2 ** min(errors, 6))
                    self.log.warning("transient S3 error (%s); polling again in up to %.0fs", err.code, pause)
                    final = await self._sleep_or_deadline(random.uniform(pause / 2, pause))
                    continue
                if len(tracker.failed) > self.max_failures:
                    error = tracker.failure_error()
                    return self._event(tracker, "failure", str(error), failures=error.failures)
                if tracker.done:
                    return self._event(
                        tracker,
                        "success",
                        f"{len(tracker.succeeded)} succeeded, {len(tracker.failed)} failed (tolerated)",
                    )
                if final:
                    return self._timeout(tracker)
                self.log.info("waiting for async results: %s", tracker.summary())
                final = await self._sleep_or_deadline(self.poke_interval)

    async def _sleep_or_deadline(self, seconds: float) -> bool:
        """Sleep ``seconds`` (less if the deadline is nearer); True once the deadline has passed."""
        if self.deadline is not None:
            remaining = self.deadline - time.time()
            if remaining <= 0:
                return True
            seconds = min(seconds, remaining)
        await asyncio.sleep(seconds)
        return self.deadline is not None and time.time() >= self.deadline

    def _timeout(self, tracker: AsyncInferenceTracker) -> TriggerEvent:
        pending = tracker.pending
        shown = ", ".join(str(s.invocation.inference_id) for s in pending[:5])
        return self._event(
            tracker,
            "timeout",
            f"timed out with {len(pending)} invocation(s) still pending (e.g. {shown}): {tracker.summary()}",
        )
