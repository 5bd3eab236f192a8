"""SageMakerAsyncInferenceTrigger: serialisation, and exactly one event per run on the local S3 server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from airflow_provider_smrt.exceptions import CredentialsError, ParameterValidationError, ServiceError
from airflow_provider_smrt.s3 import S3Location
from airflow_provider_smrt.triggers import async_inference as trigger_module
from airflow_provider_smrt.triggers.async_inference import SageMakerAsyncInferenceTrigger

CLASS_PATH = "airflow_provider_smrt.triggers.async_inference.SageMakerAsyncInferenceTrigger"


def _events(trigger: SageMakerAsyncInferenceTrigger) -> list[Any]:
    async def collect() -> list[Any]:
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


def _records(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "inference_id": f"id-{i}",
            "input": f"{prefix}in/{i}.csv",
            "output_location": f"{prefix}out/id-{i}.out",
            "failure_location": f"{prefix}fail/id-{i}-error.out",
            "submitted_at": "2026-01-01T00:00:00+00:00",
            "request_ttl_seconds": 60,
            "invocation_timeout_seconds": None,
        }
        for i in range(n)
    ]


def _put(s3_client: Any, uri: str, data: bytes) -> None:
    loc = S3Location.parse(uri)
    s3_client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)


def test_serialize_round_trip() -> None:
    from tests.support.airflow_compat import import_string, serde

    serialize, deserialize = serde()

    trigger = SageMakerAsyncInferenceTrigger(
        invocations=_records("s3://b/p/", 2),
        aws_conn_id="my_aws",
        region_name="eu-west-1",
        verify="/etc/ca.pem",
        botocore_config={"read_timeout": 30},
        poke_interval=7.5,
        timeout=120,
        max_failures=1,
    )
    path, kwargs = trigger.serialize()
    assert path == CLASS_PATH
    assert set(kwargs) == {
        "invocations",
        "ledger_uri",
        "aws_conn_id",
        "region_name",
        "verify",
        "botocore_config",
        "poke_interval",
        "timeout",
        "deadline",
        "max_failures",
        "resume_state",
    }
    assert abs(kwargs["deadline"] - (time.time() + 120)) < 5
    # As the worker hands it to the triggerer: serde-encoded, then rebuilt from the class path.
    rebuilt = import_string(path)(**deserialize(serialize(kwargs)))
    assert rebuilt.serialize() == (path, kwargs)  # the deadline does not move on rebuild
    assert rebuilt.invocations == trigger.invocations and rebuilt.botocore_config == {"read_timeout": 30}


def test_success_failure_and_timeout_events(local_stack: Any, s3_client: Any, s3_prefix: str) -> None:
    records = _records(s3_prefix, 4)
    for record in records:
        _put(s3_client, record["output_location"], b"42\n")
    (event,) = _events(SageMakerAsyncInferenceTrigger(invocations=records, poke_interval=0.1, timeout=30))
    assert event.payload["status"] == "success"
    assert [s["output_size"] for s in event.payload["invocations"]] == [3] * 4
    assert event.payload["requests"] == 2  # one listing per directory (outputs, failures) for all four

    failing = _records(s3_prefix + "f/", 3)
    _put(s3_client, failing[0]["output_location"], b"1")
    _put(s3_client, failing[2]["failure_location"], b"ModelError: bad input " + b"!" * 9000)
    (event,) = _events(SageMakerAsyncInferenceTrigger(invocations=failing, poke_interval=0.1, timeout=30))
    assert event.payload["status"] == "failure"
    assert "id-2" in event.payload["message"] and "bad input" in event.payload["message"]
    (failure,) = event.payload["failures"]
    assert len(failure["failure_message"]) == 4096 and failure["input"].endswith("in/2.csv")

    pending = _records(s3_prefix + "never/", 2)
    started = time.monotonic()
    (event,) = _events(SageMakerAsyncInferenceTrigger(invocations=pending, poke_interval=0.2, timeout=1))
    assert event.payload["status"] == "timeout" and "2 invocation(s) still pending" in event.payload["message"]
    # Not before the timeout; the upper bound only catches a wrong unit, never a slow machine.
    assert 0.9 < time.monotonic() - started < 60
    # The first poll and the last one past the deadline, and never more often than every poke_interval
    # (how many in between depends on the machine's speed).
    assert 2 <= event.payload["polls"] <= 1 / 0.2 + 2


def _ledger(s3_client: Any, uri: str, records: list[dict[str, Any]]) -> str:
    _put(s3_client, uri, json.dumps({"version": 1, "invocations": records}).encode())
    return uri


def test_ledger_uri_keeps_kwargs_and_event_small(local_stack: Any, s3_client: Any, s3_prefix: str) -> None:
    """Given the ledger, the trigger reads the invocations from S3: its kwargs and event do not grow with them."""
    sizes = {}
    for n in (20, 300):
        records = _records(f"{s3_prefix}{n}/", n)
        for i, record in enumerate(records):
            _put(s3_client, record["failure_location" if i % 25 < 12 else "output_location"], b"x")
        uri = _ledger(s3_client, f"{s3_prefix}{n}/ledger.json", records)
        trigger = SageMakerAsyncInferenceTrigger(ledger_uri=uri, poke_interval=0.1, timeout=30, max_failures=n)
        _, kwargs = trigger.serialize()
        assert kwargs["invocations"] is None and kwargs["ledger_uri"] == uri
        (event,) = _events(trigger)
        payload = event.payload
        assert payload["status"] == "success" and "invocations" not in payload
        failed = sum(1 for i in range(n) if i % 25 < 12)
        assert payload["summary"] == {"total": n, "succeeded": n - failed, "failed": failed, "pending": 0}
        assert len(payload["first_failures"]) == 10
        assert payload["first_failures"][0]["input"] == records[0]["input"]
        assert all("failure_message" not in entry for entry in payload["first_failures"])
        sizes[n] = (len(json.dumps(kwargs)), len(json.dumps(payload)))
    assert sizes[300][0] - sizes[20][0] < 50 and sizes[300][1] - sizes[20][1] < 200, sizes

    missing = SageMakerAsyncInferenceTrigger(ledger_uri=f"{s3_prefix}nowhere.json", poke_interval=0.1, timeout=5)
    (event,) = _events(missing)
    assert event.payload["status"] == "error" and "no submission ledger at" in event.payload["message"]
    with pytest.raises(ParameterValidationError, match="exactly one of"):
        SageMakerAsyncInferenceTrigger(invocations=records, ledger_uri=uri)


def test_completion_while_waiting(
    monkeypatch: pytest.MonkeyPatch, local_stack: Any, s3_client: Any, s3_prefix: str
) -> None:
    """The outputs appear between polls (counted, not timed): one before poll 2, the other before poll 4."""
    records = _records(s3_prefix, 2)
    real_poll = trigger_module.poll_async
    polls = {"n": 0}

    async def counting(tracker: Any, client: Any, **kwargs: Any) -> Any:
        polls["n"] += 1
        if polls["n"] == 2:
            _put(s3_client, records[0]["output_location"], b"1")
        elif polls["n"] == 4:
            _put(s3_client, records[1]["output_location"], b"2")
        return await real_poll(tracker, client, **kwargs)

    monkeypatch.setattr(trigger_module, "poll_async", counting)

    async def scenario() -> list[Any]:
        trigger = SageMakerAsyncInferenceTrigger(invocations=records, poke_interval=0.01, timeout=60)
        return [event async for event in trigger.run()]

    (event,) = asyncio.run(scenario())
    assert event.payload["status"] == "success", event.payload
    assert event.payload["polls"] == polls["n"] == 4  # done on the poll after the last output appeared


def test_transient_errors_back_off_and_permanent_errors_end_with_one_event(
    monkeypatch: pytest.MonkeyPatch, local_stack: Any, s3_client: Any, s3_prefix: str
) -> None:
    records = _records(s3_prefix, 1)
    _put(s3_client, records[0]["output_location"], b"1")
    real_poll = trigger_module.poll_async
    calls = {"n": 0}

    async def flaky(tracker: Any, client: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ServiceError("S3 said 503", code="ServiceUnavailable")
        await real_poll(tracker, client, **kwargs)

    monkeypatch.setattr(trigger_module, "poll_async", flaky)
    (event,) = _events(SageMakerAsyncInferenceTrigger(invocations=records, poke_interval=0.05, timeout=30))
    assert event.payload["status"] == "success" and calls["n"] == 3

    async def denied(tracker: Any, client: Any, **kwargs: Any) -> None:
        raise CredentialsError("AccessDenied", code="AccessDenied")

    monkeypatch.setattr(trigger_module, "poll_async", denied)
    (event,) = _events(SageMakerAsyncInferenceTrigger(invocations=records, poke_interval=0.05, timeout=30))
    assert event.payload["status"] == "error" and "AccessDenied" in event.payload["message"]

    async def broken(tracker: Any, client: Any, **kwargs: Any) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(trigger_module, "poll_async", broken)
    (event,) = _events(SageMakerAsyncInferenceTrigger(invocations=records, poke_interval=0.05, timeout=30))
    assert event.payload["status"] == "error" and "RuntimeError" in event.payload["message"]


def test_deferring_without_the_async_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without aiobotocore the task fails before deferring (the trigger could not run), naming the extra."""
    import sys

    from airflow_provider_smrt._compat import AirflowFailException
    from airflow_provider_smrt.sensors.async_inference import SageMakerAsyncInferenceSensor

    sensor = SageMakerAsyncInferenceSensor(
        task_id="wait", output_location="s3://bucket/out/x.out", deferrable=True, poke_interval=1
    )
    monkeypatch.setitem(sys.modules, "aiobotocore", None)  # `import aiobotocore` raises ImportError
    with pytest.raises(AirflowFailException, match=r"pip install 'airflow-provider-smrt\[async\]'"):
        trigger_module.defer_wait(sensor, invocations=[{"output_location": "s3://bucket/out/x.out"}], timeout=5)
    monkeypatch.delitem(sys.modules, "aiobotocore")
    try:
        from airflow.sdk.exceptions import TaskDeferred
    except ImportError:  # Airflow 3.0
        from airflow.exceptions import TaskDeferred  # type: ignore[no-redef,attr-defined]

    with pytest.raises(TaskDeferred):  # with the client installed, the same call defers
        trigger_module.defer_wait(sensor, invocations=[{"output_location": "s3://bucket/out/x.out"}], timeout=5)
