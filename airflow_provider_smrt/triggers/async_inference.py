"""``SageMakerAsyncInferenceTrigger``: wait in the triggerer for async invocations' output or failure objects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_smrt._compat import AirflowFailException, AirflowSensorTimeout
from airflow_provider_smrt.async_inference import AsyncInferenceTracker, poll_async
from airflow_provider_smrt.async_inference.ledger import read_ledger_async
from airflow_provider_smrt.async_inference.wait import ERROR, Log, WaitOutcome, Watch, outcome_event, wait_async
from airflow_provider_smrt.exceptions import InvocationError, ParameterValidationError
from airflow_provider_smrt.hooks.s3 import async_s3_client
from airflow_provider_smrt.s3 import S3Location


class SageMakerAsyncInferenceTrigger(BaseTrigger):
    """Poll S3 for the results of InvokeEndpointAsync requests and fire exactly one event.

    Each poll makes the fewest S3 requests (one listing per output directory with several pending
    keys, a HEAD otherwise; finished locations are never polled again; see
    :mod:`airflow_provider_smrt.async_inference`), in the one wait loop of
    :mod:`airflow_provider_smrt.async_inference.wait`. Transient S3 errors back off and retry until the
    deadline. The single event's payload is ``{"status": ..., "message": ..., "summary": {...},
    "first_failures": [...], "requests": n, "polls": n}`` with status ``success`` (every invocation done
    and at most ``max_failures`` failed), ``failure`` (more failed: ``failures`` lists the first 10 with
    the head of each failure message), ``timeout`` (the deadline passed) or ``error`` (a non-retryable S3
    error). ``summary`` counts the invocations (``total``, ``succeeded``, ``failed``, ``pending``);
    ``first_failures`` names the first 10 failed ones (input, inference id, failure location, never the
    message). Given ``invocations``, the payload also has one status dict per invocation (``invocations``).

    Give exactly one of ``ledger_uri`` (the invoke operator's submission ledger: the trigger reads the
    invocations from S3, so its arguments and event stay small whatever their number) or ``invocations``.

    :param invocations: dicts with at least ``output_location`` (as in the ledger).
    :param ledger_uri: the ``s3://`` URI of an invoke operator's submission ledger.
    :param resume_state: a small dict handed back unchanged in the event (``resume_state``): what the
        resuming task needs (the invoke operator's submission counts).
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
        invocations: list[dict[str, Any]] | None = None,
        ledger_uri: str | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
        poke_interval: float = 30.0,
        timeout: float | None = None,
        deadline: float | None = None,
        max_failures: int = 0,
        resume_state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if (invocations is None) == (ledger_uri is None):
            raise ParameterValidationError("pass exactly one of invocations or ledger_uri")
        self.invocations = None if invocations is None else [dict(invocation) for invocation in invocations]
        self.ledger_uri = ledger_uri
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
        self.resume_state = resume_state
        # Validate now, in the worker, not in the triggerer.
        if self.invocations is not None:
            AsyncInferenceTracker(self.invocations)
        else:
            S3Location.parse(str(ledger_uri))

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_smrt.triggers.async_inference.SageMakerAsyncInferenceTrigger",
            {
                "invocations": self.invocations,
                "ledger_uri": self.ledger_uri,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "verify": self.verify,
                "botocore_config": self.botocore_config,
                "poke_interval": self.poke_interval,
                "timeout": self.timeout,
                "deadline": self.deadline,
                "max_failures": self.max_failures,
                "resume_state": self.resume_state,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        tracker = AsyncInferenceTracker(self.invocations or [])
        try:
            outcome, tracker = await self._watch()
        except asyncio.CancelledError:
            raise  # the triggerer moves or stops this trigger: no event, it will be recreated
        except InvocationError as err:  # not retryable
            outcome = WaitOutcome(ERROR, f"S3 error while waiting for async results: {err}")
        except Exception as err:  # noqa: BLE001 - always end with an event the task can report
            outcome = WaitOutcome(ERROR, f"waiting for async results failed: {type(err).__name__}: {err}")
        payload = outcome.event(tracker, per_invocation=self.invocations is not None)
        if self.ledger_uri is not None:
            payload["ledger_uri"] = self.ledger_uri
        if self.resume_state is not None:
            payload["resume_state"] = self.resume_state
        yield TriggerEvent(payload)

    async def _watch(self) -> tuple[WaitOutcome, AsyncInferenceTracker]:
        client_context = await async_s3_client(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            botocore_config=self.botocore_config,
        )
        async with client_context as client:
            if self.invocations is not None:
                invocations = self.invocations
            else:
                invocations = await read_ledger_async(client, str(self.ledger_uri))
            tracker = AsyncInferenceTracker(invocations)
            watch = Watch(
                tracker,
                poke_interval=self.poke_interval,
                max_failures=self.max_failures,
                deadline=self.deadline,
                log=self.log,
            )
            # poll_async is looked up here, at call time, so it can be instrumented (tests, bench).
            return await wait_async(watch, client, poll=poll_async), tracker


ASYNC_EXTRA_HINT = "pip install 'airflow-provider-smrt[async]'"


def check_async_client() -> None:
    """Raise ``AirflowFailException`` naming the ``async`` extra when aiobotocore does not import."""
    try:
        import aiobotocore  # noqa: F401
    except ImportError as err:
        raise AirflowFailException(
            "deferrable=True waits in the triggerer with the asyncio S3 client (aiobotocore), which is not "
            f"installed: {ASYNC_EXTRA_HINT} on the workers and triggerer, or pass deferrable=False"
        ) from err


def defer_wait(
    task: Any,
    *,
    invocations: list[dict[str, Any]] | None = None,
    ledger_uri: str | None = None,
    timeout: float,
    resume_state: dict[str, Any] | None = None,
) -> None:
    """Defer ``task`` (the sensor, the invoke operator) to this trigger; it resumes in ``execute_complete``.

    The trigger gets ``ledger_uri`` (preferred: its arguments stay small) or ``invocations``, the task's
    connection parameters, ``poke_interval`` and ``max_failures``; ``resume_state`` comes back in the
    event (keep it small: it is stored with the trigger and the task instance).

    :raises AirflowFailException: the async S3 client (aiobotocore, the ``async`` extra) is not installed:
        the trigger could not run, and a task retry would not install it.
    """
    check_async_client()
    task.defer(
        trigger=SageMakerAsyncInferenceTrigger(
            invocations=invocations,
            ledger_uri=ledger_uri,
            aws_conn_id=task.aws_conn_id,
            region_name=task.region_name,
            verify=task.verify,
            botocore_config=task.botocore_config,
            poke_interval=task.poke_interval,
            timeout=timeout,
            max_failures=task.max_failures,
            resume_state=resume_state,
        ),
        method_name="execute_complete",
        timeout=timedelta(seconds=timeout + 300),
    )


def resume_from_event(event: Mapping[str, Any] | None, *, log: Log) -> Mapping[str, Any]:
    """The one ``execute_complete`` of the tasks that defer to this trigger (the sensor, the invoke operator).

    Returns the ``success`` event; raises :class:`~airflow_provider_smrt.exceptions.AsyncInferenceFailedError`
    on ``failure``, Airflow's sensor timeout on ``timeout``, :class:`~airflow_provider_smrt.exceptions.SmrtError`
    otherwise (see :func:`~airflow_provider_smrt.async_inference.wait.outcome_event`).
    """
    if event:
        log.info(
            "trigger finished: %s after %s poll(s), %s S3 request(s): %s",
            event.get("status"),
            event.get("polls"),
            event.get("requests"),
            event.get("summary"),
        )
    return outcome_event(event, log=log, timeout_error=AirflowSensorTimeout)
