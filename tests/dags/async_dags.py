"""DAGs run by the async-inference tests through ``dag.test()`` on the local stack.

Endpoint and inputs come from ``run_conf`` (params). ``render_template_as_native_obj`` lets
``input_location="{{ params.inputs }}"`` render to a list. A failing task writes its exception text to
``<params.report_dir>/<task_id>.txt`` so tests can assert on the message.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG

from airflow_provider_smrt.operators.invoke_endpoint_async import SageMakerInvokeEndpointAsyncOperator
from airflow_provider_smrt.sensors.async_inference import SageMakerAsyncInferenceSensor
from tests.support.dag_shells import dag_args, from_params, params
from tests.support.local_control import patch_faults

PARAMS = params("endpoint_name", "inputs", "content_type", "report_dir")


def _dag(dag_id: str) -> DAG:
    return DAG(**dag_args(dag_id, PARAMS, report_failures=True, render_template_as_native_obj=True))


def _invoke_args(**kwargs: Any) -> dict[str, Any]:
    """The invoke task's arguments: every file of ``params.inputs`` to ``params.endpoint_name``, and ``kwargs``."""
    args: dict[str, Any] = {
        "task_id": "invoke",
        **from_params("endpoint_name", "content_type", input_location="inputs"),
        "concurrency": 4,
    }
    args.update(kwargs)
    return args


def _invoke(**kwargs: Any) -> SageMakerInvokeEndpointAsyncOperator:
    return SageMakerInvokeEndpointAsyncOperator(**_invoke_args(**kwargs))


class FailAfterSubmitOperator(SageMakerInvokeEndpointAsyncOperator):
    """Submits, then fails its first try: the retry must not submit again."""

    def execute(self, context: Any) -> Any:
        result = super().execute(context)
        if context["ti"].try_number == 1:
            raise RuntimeError("simulated worker failure after the requests were submitted")
        return result


class HangingSubmitOperator(SageMakerInvokeEndpointAsyncOperator):
    """First try: the first half of the requests is answered, the second half hangs (in flight) until the
    retry starts, so ``execution_timeout`` fires while the submitter waits for them in its shutdown."""

    release = threading.Event()

    def execute(self, context: Any) -> Any:
        self._try = context["ti"].try_number
        if self._try == 1:
            HangingSubmitOperator.release.clear()
        else:
            HangingSubmitOperator.release.set()  # the first try's hung requests go out now: in flight twice
        inputs = list(self.input_location or [])
        self._hanging = set(inputs[len(inputs) // 2 :])
        return super().execute(context)

    def _submit_one(self, request: Any, *, ids: dict[str, str]) -> Any:
        if self._try == 1 and request.identity in self._hanging:
            HangingSubmitOperator.release.wait(timeout=60)
        return super()._submit_one(request, ids=ids)


class ReleasingSensor(SageMakerAsyncInferenceSensor):
    """Clears the endpoint's ``hold_after_requests`` fault after every poke that found results still pending.

    An endpoint created with ``hold_after_requests=0`` processes nothing before the sensor's first poke has seen the
    requests pending, so that poke is sure to wait (reschedule, defer) however slow the machine is.
    """

    def poke(self, context: Any) -> Any:
        result = super().poke(context)
        if not result:
            endpoint = context["params"]["endpoint_name"]
            patch_faults(os.environ["SMRT_RUNTIME_ENDPOINT_URL"], endpoint, {"hold_after_requests": None})
        return result


# One DAG per sensor mode; the same DAGs serve success, failure and TTL cases (inputs decide).
for _mode in ("poke", "reschedule", "deferrable"):
    with _dag(f"t_async_sensor_{_mode}"):
        _invoke() >> ReleasingSensor(
            task_id="wait",
            invocations="{{ ti.xcom_pull(task_ids='invoke') }}",
            mode="reschedule" if _mode == "reschedule" else "poke",
            deferrable=_mode == "deferrable",
            poke_interval=1,
        )

with _dag("t_async_tolerant"):
    _invoke() >> SageMakerAsyncInferenceSensor(
        task_id="wait", invocations="{{ ti.xcom_pull(task_ids='invoke') }}", poke_interval=1, max_failures=1
    )

with _dag("t_async_large"):
    # The output of the invoke task (an XComArg) feeds the sensor directly.
    invoke = _invoke(request_ttl_seconds=600, invocation_timeout_seconds=600)
    invoke >> SageMakerAsyncInferenceSensor(task_id="wait", invocations=invoke.output, poke_interval=1)

with _dag("t_async_operator_waits"):
    _invoke(wait_for_completion=True, poke_interval=1)

with _dag("t_async_operator_defers"):
    _invoke(deferrable=True, poke_interval=1)

with _dag("t_async_sensor_timeout_deferrable"):
    _invoke() >> SageMakerAsyncInferenceSensor(
        task_id="wait", invocations="{{ ti.xcom_pull(task_ids='invoke') }}", deferrable=True, poke_interval=1, timeout=3
    )

for _mode in ("poke", "deferrable"):
    with _dag(f"t_async_ttl_{_mode}"):
        # RequestTTLSeconds=60 is the service minimum; the endpoint's async_limits_scale shrinks it in tests.
        _invoke(request_ttl_seconds=60, invocation_timeout_seconds=600) >> ReleasingSensor(
            task_id="wait",
            invocations="{{ ti.xcom_pull(task_ids='invoke') }}",
            poke_interval=1,
            deferrable=_mode == "deferrable",
        )

with _dag("t_async_retry"):
    FailAfterSubmitOperator(**_invoke_args(retries=1, retry_delay=timedelta(seconds=0)))

with _dag("t_async_submit_timeout"):
    HangingSubmitOperator(
        **_invoke_args(
            concurrency=8, retries=1, retry_delay=timedelta(seconds=0), execution_timeout=timedelta(seconds=3)
        )
    )

for _mode in ("waits", "defers"):
    with _dag(f"t_async_fanout_{_mode}"):
        # A large fan-out that tolerates failures: the XCom and the trigger's kwargs stay the same size.
        _invoke(
            concurrency=16, wait_for_completion=True, deferrable=_mode == "defers", poke_interval=0.5, max_failures=100
        )
