"""SageMakerAsyncInferenceSensor in poke, reschedule and deferrable mode, on the local stack through ``dag.test()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smrt.async_inference import read_records, read_results
from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.s3 import S3Location
from airflow_provider_smrt.sensors.async_inference import SageMakerAsyncInferenceSensor
from tests.support.dag_runs import run_dag

pytestmark = pytest.mark.usefixtures("local_stack")


def _upload(s3_client: Any, uri: str, data: bytes) -> str:
    loc = S3Location.parse(uri)
    s3_client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
    return uri


def _inputs(s3_client: Any, s3_prefix: str, lines: list[bytes]) -> list[str]:
    return [_upload(s3_client, f"{s3_prefix}in/{i}.csv", line) for i, line in enumerate(lines)]


# -- narrow ----------------------------------------------------------------------------------------


def test_invocations_forms_and_default_timeout() -> None:
    records = [
        {"output_location": "s3://b/o/1.out", "failure_location": "s3://b/f/1", "request_ttl_seconds": 120},
        {"output_location": "s3://b/o/2.out", "invocation_timeout_seconds": 30, "extra": "ignored"},
    ]
    sensor = SageMakerAsyncInferenceSensor(task_id="w", invocations=str(records))
    assert [inv.output_location for inv in sensor.resolve_invocations()] == ["s3://b/o/1.out", "s3://b/o/2.out"]
    assert sensor.timeout_from_ttl
    from airflow_provider_smrt.async_inference import default_timeout_seconds

    assert default_timeout_seconds(sensor.resolve_invocations()) == 21600 + 30 + 60  # the second: default TTL
    single = SageMakerAsyncInferenceSensor(task_id="s", output_location="s3://b/o/x.out", timeout=5)
    assert not single.timeout_from_ttl and single.timeout == 5
    assert single.resolve_invocations()[0].failure_location is None
    with pytest.raises(ParameterValidationError):
        SageMakerAsyncInferenceSensor(task_id="x")
    with pytest.raises(ParameterValidationError):
        SageMakerAsyncInferenceSensor(task_id="x", invocations="not a list").resolve_invocations()


def test_poke_keeps_state_and_never_repolls(make_endpoint: Any, s3_client: Any, s3_prefix: str) -> None:
    """Poke mode, called directly: finished locations drop out of later pokes."""
    done = _upload(s3_client, f"{s3_prefix}out/a.out", b"3")
    sensor = SageMakerAsyncInferenceSensor(
        task_id="w",
        invocations=[
            {"output_location": done, "failure_location": f"{s3_prefix}fail/a-error.out", "inference_id": "a"},
            {"output_location": f"{s3_prefix}out/b.out", "failure_location": f"{s3_prefix}fail/b-error.out"},
        ],
    )
    assert sensor.poke({}) is False
    tracker = sensor._tracker
    assert tracker is not None and tracker.requests == 2  # one listing per directory
    assert [p.keys for p in tracker.plan()] == [(S3Location.parse(f"{s3_prefix}fail/b-error.out").key,),
                                                (S3Location.parse(f"{s3_prefix}out/b.out").key,)]
    _upload(s3_client, f"{s3_prefix}out/b.out", b"7")
    result = sensor.poke({})
    assert result and [s["status"] for s in result.xcom_value] == ["succeeded", "succeeded"]
    assert [s["output_size"] for s in result.xcom_value] == [1, 1]


# -- through Airflow -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_sensor_modes_succeed(
    mode: str, make_endpoint: Any, endpoint_stats: Any, s3_client: Any, s3_prefix: str
) -> None:
    # Held until the sensor's first poke has seen them pending (ReleasingSensor), then 2.5 s each.
    endpoint = make_endpoint("sum", faults={"hold_after_requests": 0, "async_delay_seconds": 2.5, "async_capacity": 4})
    inputs = _inputs(s3_client, s3_prefix, [b"1,2\n", b"3,4\n5,6\n", b"10\n"])
    run = run_dag(f"t_async_sensor_{mode}", {"endpoint_name": endpoint, "inputs": inputs})
    assert run.state == "success", run.states
    summary = run.xcom("wait")  # the operator's summary, with the wait's counts
    assert (summary["requests"], summary["succeeded"], summary["failed"], summary["pending"]) == (3, 3, 0, 0)
    statuses = read_results(s3_client, summary)
    assert [s["status"] for s in statuses] == ["succeeded"] * 3
    assert all(s["output_size"] > 0 and s["time_to_completion_seconds"] >= 1.0 for s in statuses)
    assert [s["input"] for s in statuses] == inputs
    assert endpoint_stats(endpoint)["async_submitted"] == 3
    assert run.deferred("wait") == (mode == "deferrable")
    if mode == "reschedule":
        assert run.reschedules("wait") >= 1  # the first poke found all three pending
    else:
        assert run.reschedules("wait") == 0


@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_failure_object_fails_the_sensor_with_its_message(
    mode: str, make_endpoint: Any, s3_client: Any, s3_prefix: str, tmp_path: Path
) -> None:
    # Held until the sensor's first poke has seen both pending; one worker: the failing request fails after
    # the first one's 2 s.
    faults = {"hold_after_requests": 0, "async_delay_seconds": 2.0, "async_capacity": 1, "fail_async_marker": "FAIL"}
    endpoint = make_endpoint("sum", faults=faults)
    inputs = _inputs(s3_client, s3_prefix, [b"1,2\n", b"FAIL,1\n"])
    run = run_dag(
        f"t_async_sensor_{mode}", {"endpoint_name": endpoint, "inputs": inputs, "report_dir": str(tmp_path)}
    )
    assert run.states == {"invoke": "success", "wait": "failed"}
    report = (tmp_path / "wait.txt").read_text()
    invoked = read_records(s3_client, run.xcom("invoke"))
    assert "AsyncInferenceFailedError" in report
    assert "failure marker" in report  # the failure object's message
    assert invoked[1]["inference_id"] in report and inputs[1] in report
    assert invoked[0]["inference_id"] not in report
    assert run.deferred("wait") == (mode == "deferrable")  # the failure came to the trigger


def test_max_failures_tolerates(make_endpoint: Any, s3_client: Any, s3_prefix: str) -> None:
    endpoint = make_endpoint("sum", faults={"fail_async_marker": "FAIL"})
    inputs = _inputs(s3_client, s3_prefix, [b"1,2\n", b"FAIL\n", b"4\n"])
    run = run_dag("t_async_tolerant", {"endpoint_name": endpoint, "inputs": inputs})
    assert run.state == "success", run.states
    summary = run.xcom("wait")
    assert (summary["failed"], [f["input"] for f in summary["first_failures"]]) == (1, [inputs[1]])
    assert "marker" not in str(summary)  # the failure message stays in S3
    statuses = read_results(s3_client, summary)
    assert [s["status"] for s in statuses] == ["succeeded", "failed", "succeeded"]
    assert "failure marker" in statuses[1]["failure_message"]


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_request_ttl_expiry_fails_with_the_service_message(
    mode: str, make_endpoint: Any, s3_client: Any, s3_prefix: str, tmp_path: Path
) -> None:
    # Held until the sensor's first poke has seen them pending; then one worker, each request holds it 2 s;
    # TTL 60 s scaled by 0.02 = 1.2 s: the later ones were queued more than 2 s, they expire.
    faults = {"hold_after_requests": 0, "async_delay_seconds": 2.0, "async_capacity": 1, "async_limits_scale": 0.02}
    endpoint = make_endpoint("sum", faults=faults)
    inputs = _inputs(s3_client, s3_prefix, [b"1\n", b"2\n", b"3\n"])
    conf = {"endpoint_name": endpoint, "inputs": inputs, "report_dir": str(tmp_path)}
    run = run_dag(f"t_async_ttl_{mode}", conf)
    assert run.states == {"invoke": "success", "wait": "failed"}
    report = (tmp_path / "wait.txt").read_text()
    assert "AsyncInferenceFailedError" in report and "expired" in report and "TTL" in report
    assert run.deferred("wait") == (mode == "deferrable")  # the failure came to the trigger


def test_sensor_timeout_in_the_triggerer(make_endpoint: Any, s3_client: Any, s3_prefix: str, tmp_path: Path) -> None:
    endpoint = make_endpoint("sum", faults={"hold_after_requests": 0})  # never processed while the run lasts
    inputs = _inputs(s3_client, s3_prefix, [b"1\n"])
    run = run_dag(
        "t_async_sensor_timeout_deferrable", {"endpoint_name": endpoint, "inputs": inputs, "report_dir": str(tmp_path)}
    )
    assert run.states == {"invoke": "success", "wait": "failed"}
    assert run.deferred("wait")
    report = (tmp_path / "wait.txt").read_text()
    assert "AirflowSensorTimeout" in report and "still pending" in report
