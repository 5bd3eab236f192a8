"""SageMakerInvokeEndpointAsyncOperator: validation, bounded submission, idempotency, waiting.

Narrow tests stub the hook; the rest run on the local stack (moto S3 + the local endpoint), the DAG
cases through ``dag.test()``.
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from airflow_provider_smrt._compat import AirflowFailException
from airflow_provider_smrt.async_inference import FIRST_FAILURES, read_records, read_results
from airflow_provider_smrt.async_inference.ledger import output_id
from airflow_provider_smrt.exceptions import ParameterValidationError, ThrottlingError
from airflow_provider_smrt.invocation import MAX_PAYLOAD_BYTES, InvokeEndpointAsyncResult
from airflow_provider_smrt.operators.invoke_endpoint_async import (
    LEDGER_DIRNAME,
    AsyncRequest,
    SageMakerInvokeEndpointAsyncOperator,
    deterministic_inference_id,
)
from airflow_provider_smrt.s3 import S3Location
from tests.support.dag_runs import run_dag

RECORD_KEYS = {"input", "inference_id", "output_location", "failure_location", "submitted_at"}


def _context(run_id: str = "manual__1", *, map_index: int = -1, try_number: int = 1) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="d", task_id="invoke", run_id=run_id, map_index=map_index, try_number=try_number)
    return {"ti": ti}


def _op(**kwargs: Any) -> SageMakerInvokeEndpointAsyncOperator:
    kwargs.setdefault("task_id", "invoke")
    kwargs.setdefault("endpoint_name", "smrt-sum")
    return SageMakerInvokeEndpointAsyncOperator(**kwargs)


def _upload(s3_client: Any, uri: str, data: bytes) -> str:
    loc = S3Location.parse(uri)
    s3_client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
    return uri


def _csv(rows: np.ndarray) -> bytes:
    return ("\n".join(",".join(f"{v:.6f}" for v in row) for row in rows) + "\n").encode()


def _read(s3_client: Any, uri: str) -> bytes:
    loc = S3Location.parse(uri)
    return s3_client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()


# -- narrow ----------------------------------------------------------------------------------------


def test_inference_id_is_deterministic_and_short() -> None:
    base = {"dag_id": "d", "task_id": "a_very_long_task_id_with.dots" * 3, "run_id": "r", "map_index": -1}
    one = deterministic_inference_id(**base, identity="s3://b/k")
    assert one == deterministic_inference_id(**base, identity="s3://b/k")
    assert len(one) <= 64 and one.isascii() and " " not in one
    others = {
        deterministic_inference_id(**{**base, "run_id": "r2"}, identity="s3://b/k"),
        deterministic_inference_id(**{**base, "map_index": 3}, identity="s3://b/k"),
        deterministic_inference_id(**base, identity="s3://b/k2"),
    }
    assert one not in others and len(others) == 3
    assert AsyncRequest(body=b"secret").identity.startswith("inline:sha256:")
    assert "secret" not in repr(AsyncRequest(body=b"secret"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of"),
        ({"input_location": "s3://b/k", "body": b"x"}, "exactly one of"),
        ({"body": b"x" * 128_001}, "128,000"),
        ({"input_location": ["s3://b/1", "s3://b/2"], "filename": "same.out"}, "same name"),
        ({"input_location": "s3://b/1", "request_ttl_seconds": 30}, "request_ttl_seconds"),
        ({"input_location": "ftp://b/1"}, "input_location"),
        ({"input_location": []}, "empty"),
    ],
)
def test_validation_before_any_request(kwargs: dict[str, Any], message: str) -> None:
    op = _op(**kwargs)
    op.__dict__["hook"] = None  # any request would fail loudly
    # A retry cannot fix a bad parameter: Airflow's AirflowFailException, the package error as its cause.
    with pytest.raises(AirflowFailException, match=message) as failed:
        op.execute(_context())
    assert isinstance(failed.value.__cause__, ParameterValidationError)


class _FakeHook:
    """Counts concurrent InvokeEndpointAsync calls."""

    def __init__(self, *, delay: float = 0.02, fail_at: int | None = None) -> None:
        self.delay = delay
        self.fail_at = fail_at
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.lock = threading.Lock()
        self.conn = object()

    def invoke_endpoint_async(self, endpoint_name: str, **kwargs: Any) -> InvokeEndpointAsyncResult:
        with self.lock:
            self.calls += 1
            call = self.calls
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            if self.fail_at is not None and call == self.fail_at:
                raise ThrottlingError("throttled", code="ThrottlingException")
            name = kwargs["filename"]
            return InvokeEndpointAsyncResult(
                inference_id=kwargs["inference_id"],
                output_location=f"s3://smrt-local/fake-out/{name}",
                failure_location=f"s3://smrt-local/fake-fail/{kwargs['inference_id']}-error.out",
            )
        finally:
            with self.lock:
                self.in_flight -= 1


def test_bounded_concurrency_and_ledger_on_failure(s3_client: Any, s3_prefix: str) -> None:
    inputs = [f"{s3_prefix}in/{i}.csv" for i in range(40)]
    hook = _FakeHook()
    op = _op(input_location=inputs, concurrency=3)
    op.__dict__["hook"] = hook
    summary = op.execute(_context())
    assert hook.calls == 40 and hook.max_in_flight == 3
    assert (summary["requests"], summary["submitted"], summary["resumed"]) == (40, 40, 0)
    records = read_records(s3_client, summary)
    assert [r["input"] for r in records] == inputs
    assert all(RECORD_KEYS <= set(r) for r in records)
    assert all(r["output_location"].endswith(f"/{output_id(r['inference_id'])}.out") for r in records)

    # A failure stops new submissions; what was submitted is in the ledger, so a retry skips it.
    failing = _FakeHook(fail_at=10)
    op = _op(input_location=inputs, concurrency=2)
    op.__dict__["hook"] = failing
    with pytest.raises(ThrottlingError):
        op.execute(_context("run-2"))
    assert failing.calls < 40
    retry = _FakeHook()
    op = _op(input_location=inputs, concurrency=2)
    op.__dict__["hook"] = retry
    summary = op.execute(_context("run-2"))
    assert retry.calls == 40 - (failing.calls - 1)  # only the ones that never went through
    assert (summary["submitted"], summary["resumed"]) == (retry.calls, failing.calls - 1)
    records = read_records(s3_client, summary)
    assert [r["input"] for r in records] == inputs  # the ledger keeps the request order
    assert len({r["inference_id"] for r in records}) == 40


# -- on the local stack ----------------------------------------------------------------------------


def test_retry_does_not_resubmit_and_recovers_without_ledger(
    make_endpoint: Any, endpoint_stats: Any, s3_client: Any, s3_prefix: str
) -> None:
    endpoint = make_endpoint("sum")
    inputs = [_upload(s3_client, f"{s3_prefix}in/{i}.csv", b"1,2\n3,4\n") for i in range(6)]
    summary = _op(endpoint_name=endpoint, input_location=inputs, content_type="text/csv").execute(_context())
    first = read_records(s3_client, summary)
    assert endpoint_stats(endpoint)["async_submitted"] == 6
    again = _op(endpoint_name=endpoint, input_location=inputs, content_type="text/csv").execute(
        _context(try_number=2)
    )
    assert (again["submitted"], again["resumed"], again["ledger_uri"]) == (0, 6, summary["ledger_uri"])
    assert read_records(s3_client, again) == first  # same records, same submitted_at: read from the ledger
    assert endpoint_stats(endpoint)["async_submitted"] == 6

    # The worker died before the ledger was flushed: outputs exist, so nothing is resubmitted either.
    ledger_prefix = S3Location.parse(f"{s3_prefix}in/{LEDGER_DIRNAME}/x")
    listed = s3_client.list_objects_v2(Bucket=ledger_prefix.bucket, Prefix=ledger_prefix.directory)
    (ledger_key,) = [obj["Key"] for obj in listed["Contents"]]
    document = json.loads(s3_client.get_object(Bucket=ledger_prefix.bucket, Key=ledger_key)["Body"].read())
    document["invocations"] = document["invocations"][:1]
    s3_client.put_object(Bucket=ledger_prefix.bucket, Key=ledger_key, Body=json.dumps(document).encode())
    _wait_outputs(s3_client, first)
    third = _op(endpoint_name=endpoint, input_location=inputs, content_type="text/csv").execute(_context())
    assert endpoint_stats(endpoint)["async_submitted"] == 6 and third["resumed"] == 6
    assert [r["output_location"] for r in read_records(s3_client, third)] == [r["output_location"] for r in first]

    # A different run (e.g. a backfill of another date) submits its own requests, with other ids.
    other_summary = _op(endpoint_name=endpoint, input_location=inputs, content_type="text/csv").execute(
        _context("run-b")
    )
    other = read_records(s3_client, other_summary)
    assert endpoint_stats(endpoint)["async_submitted"] == 12
    assert not {r["inference_id"] for r in other} & {r["inference_id"] for r in first}
    # resubmit=True ignores the ledger.
    _op(endpoint_name=endpoint, input_location=inputs[:2], content_type="text/csv", resubmit=True).execute(
        _context()
    )
    assert endpoint_stats(endpoint)["async_submitted"] == 14


def _wait_outputs(s3_client: Any, records: list[dict[str, Any]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for record in records:
        loc = S3Location.parse(record["output_location"])
        while True:
            try:
                s3_client.head_object(Bucket=loc.bucket, Key=loc.key)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_inline_body_every_parameter_and_wait(make_endpoint: Any, endpoint_stats: Any, s3_client: Any) -> None:
    endpoint = make_endpoint("sum")
    op = _op(
        endpoint_name=endpoint,
        body='{"instances": [[1, 2, 3], [4, 5, 6]]}',
        content_type="application/json",
        accept="application/json",
        custom_attributes="trace=abc",
        inference_id="inline-test",
        request_ttl_seconds=120,
        invocation_timeout_seconds=30,
        s3_output_path_extension="ext/a",
        filename="{output_id}.json",
        wait_for_completion=True,
        poke_interval=0.2,
        ledger_uri=None,
    )
    summary = op.execute(_context())
    # No ledger (an inline body, no ledger_uri): the one record travels in the summary.
    assert summary["ledger_uri"] is None and summary["waited"] and summary["succeeded"] == 1
    (record,) = read_results(s3_client, summary)
    assert record == {**summary["invocations"][0], **record}
    assert record["status"] == "succeeded" and record["output_size"] > 0
    assert record["inference_id"].startswith("inline-test-")
    assert "/ext/a/" in record["output_location"] and record["output_location"].endswith(".json")
    assert record["input"].startswith("inline:sha256:")
    assert record["request_ttl_seconds"] == 120
    assert json.loads(_read(s3_client, record["output_location"])) == {"predictions": [6.0, 15.0]}
    assert endpoint_stats(endpoint)["async_submitted"] == 1
    assert len(record["output_location"].rsplit("/", 1)[1]) == len("0" * 24 + ".json")


def test_filename_longer_than_the_service_allows_is_refused_before_sending(
    make_endpoint: Any, endpoint_stats: Any
) -> None:
    endpoint = make_endpoint("sum")
    inputs = ["s3://smrt-local/a", "s3://smrt-local/b"]
    op = _op(endpoint_name=endpoint, input_location=inputs, filename="{inference_id}.out")
    with pytest.raises(AirflowFailException, match=r"1-32 .*'\{output_id\}'"):
        op.execute(_context())
    assert endpoint_stats(endpoint)["async_submitted"] == 0


def test_large_payload_through_dag(make_endpoint: Any, s3_client: Any, s3_prefix: str) -> None:
    """A payload above the 6 MiB real-time limit, scored via the async path, checked value by value."""
    endpoint = make_endpoint("sum")
    rng = np.random.default_rng(7)
    rows = rng.uniform(-1000, 1000, size=(80_000, 10))
    payload = _csv(rows)
    assert len(payload) > MAX_PAYLOAD_BYTES
    uri = _upload(s3_client, f"{s3_prefix}large/input.csv", payload)
    run = run_dag("t_async_large", {"endpoint_name": endpoint, "inputs": [uri]})
    assert run.state == "success", run.states
    summary = run.xcom("wait")
    assert (summary["requests"], summary["succeeded"], summary["failed"]) == (1, 1, 0)
    (status,) = read_results(s3_client, summary)
    assert status["status"] == "succeeded" and status["time_to_completion_seconds"] is not None
    got = np.array([float(line) for line in _read(s3_client, status["output_location"]).decode().split()])
    expected = np.round(rows, 6).sum(axis=1)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-6)


def test_retried_task_does_not_resubmit_through_dag(
    make_endpoint: Any, endpoint_stats: Any, s3_client: Any, s3_prefix: str
) -> None:
    endpoint = make_endpoint("sum")
    inputs = [_upload(s3_client, f"{s3_prefix}in/{i}.csv", b"1,2\n") for i in range(5)]
    run = run_dag("t_async_retry", {"endpoint_name": endpoint, "inputs": inputs})
    assert run.state == "success", run.states
    ti = run.task_instance("invoke")
    assert ti.try_number == 2  # the first try failed after submitting
    assert endpoint_stats(endpoint)["async_submitted"] == 5
    summary = run.xcom("invoke")
    assert (summary["requests"], summary["submitted"], summary["resumed"]) == (5, 0, 5)
    assert [r["input"] for r in read_records(s3_client, summary)] == inputs


def test_execution_timeout_while_submitting_resends_only_the_requests_in_flight(
    make_endpoint: Any, endpoint_stats: Any, s3_client: Any, s3_prefix: str
) -> None:
    """execution_timeout fires inside the submitter's shutdown while 4 of 8 requests hang: the 4 answered
    ones are already in the ledger, so the retry sends only the 4 that were in flight (12 in all, not 16)."""
    endpoint = make_endpoint("sum")
    inputs = [_upload(s3_client, f"{s3_prefix}in/{i}.csv", f"{i},1\n".encode()) for i in range(8)]
    run = run_dag("t_async_submit_timeout", {"endpoint_name": endpoint, "inputs": inputs})
    assert run.state == "success", run.states
    assert run.task_instance("invoke").try_number == 2  # the first try timed out
    submitted = endpoint_stats(endpoint)["async_submitted"]
    in_flight = 4
    assert len(inputs) <= submitted <= len(inputs) + in_flight, submitted


def test_operator_waits_in_worker_and_in_triggerer(make_endpoint: Any, s3_client: Any, s3_prefix: str) -> None:
    endpoint = make_endpoint("sum", faults={"async_delay_seconds": 1.5})
    inputs = [_upload(s3_client, f"{s3_prefix}in/{i}.csv", f"{i},1\n".encode()) for i in range(3)]
    for dag_id in ("t_async_operator_waits", "t_async_operator_defers"):
        run = run_dag(dag_id, {"endpoint_name": endpoint, "inputs": inputs})
        assert run.state == "success", (dag_id, run.states)
        summary = run.xcom("invoke")
        assert (summary["requests"], summary["succeeded"], summary["failed"], summary["pending"]) == (3, 3, 0, 0)
        records = read_results(s3_client, summary)
        assert [r["status"] for r in records] == ["succeeded"] * 3
        assert [float(_read(s3_client, r["output_location"])) for r in records] == [1.0, 2.0, 3.0]
        assert run.deferred("invoke") == dag_id.endswith("defers")


def test_waiting_in_the_worker_times_out_as_the_sensor_does(s3_client: Any, s3_prefix: str) -> None:
    """The operator's synchronous wait is the shared loop: a timeout is Airflow's sensor timeout."""
    from airflow_provider_smrt._compat import AirflowSensorTimeout

    op = _op(input_location=f"{s3_prefix}in/x.csv", wait_timeout=0.3, poke_interval=0.1, wait_for_completion=True)
    records = [
        {
            "input": f"{s3_prefix}in/x.csv",
            "inference_id": "never",
            "output_location": f"{s3_prefix}out/never.out",
            "failure_location": f"{s3_prefix}fail/never-error.out",
        }
    ]
    summary = {"ledger_uri": None, "invocations": records}
    with pytest.raises(AirflowSensorTimeout, match="1 invocation\\(s\\) still pending"):
        op._wait(_context(), records, summary)
    _upload(s3_client, f"{s3_prefix}out/never.out", b"42\n")
    waited = op._wait(_context(), records, summary)
    assert (waited["succeeded"], waited["failed"], waited["pending"]) == (1, 0, 0)
    (status,) = read_results(s3_client, waited)
    assert status["status"] == "succeeded" and status["output_size"] == 3 and status["inference_id"] == "never"


def _upload_many(s3_client: Any, uris: list[str], bodies: list[bytes]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda pair: _upload(s3_client, *pair), zip(uris, bodies, strict=True)))


@pytest.mark.parametrize("mode", ["waits", "defers"])
def test_xcom_and_trigger_kwargs_stay_bounded_for_a_large_fan_out(
    mode: str, make_endpoint: Any, endpoint_stats: Any, s3_client: Any, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 requests give the same size of XCom (and of trigger kwargs) as 20: counts, the ledger's URI and the
    first 10 failures; every record is still read back from the ledger."""
    from airflow_provider_smrt.triggers.async_inference import SageMakerAsyncInferenceTrigger

    kwargs_seen: list[dict[str, Any]] = []
    serialize = SageMakerAsyncInferenceTrigger.serialize

    def recording(self: SageMakerAsyncInferenceTrigger) -> tuple[str, dict[str, Any]]:
        path, kwargs = serialize(self)
        kwargs_seen.append(kwargs)
        return path, kwargs

    monkeypatch.setattr(SageMakerAsyncInferenceTrigger, "serialize", recording)
    endpoint = make_endpoint("sum", faults={"fail_async_marker": "FAIL", "async_capacity": 8})
    failing = 12
    sizes: dict[int, tuple[int, int]] = {}
    for n in (20, 2000):
        inputs = [f"{s3_prefix}{n}/in/{i:05d}.csv" for i in range(n)]
        _upload_many(s3_client, inputs, [b"FAIL,1\n" if i < failing else f"{i},1\n".encode() for i in range(n)])
        kwargs_seen.clear()
        run = run_dag(f"t_async_fanout_{mode}", {"endpoint_name": endpoint, "inputs": inputs})
        assert run.state == "success", run.states
        assert run.deferred("invoke") == (mode == "defers")
        summary = run.xcom("invoke")
        assert (summary["requests"], summary["submitted"], summary["resumed"]) == (n, n, 0)
        assert (summary["succeeded"], summary["failed"], summary["pending"]) == (n - failing, failing, 0)
        assert summary["invocations"] is None and summary["ledger_uri"].startswith(f"{s3_prefix}{n}/in/")
        # The first failures are capped, in request order, and never carry the container's message.
        assert len(summary["first_failures"]) == FIRST_FAILURES < failing
        assert [f["input"] for f in summary["first_failures"]] == inputs[:FIRST_FAILURES]
        for failure in summary["first_failures"]:
            assert failure["failure_location"] and failure["error"] == "AsyncInferenceFailedError"
        assert "marker" not in json.dumps(summary)
        # Every record is in the ledger, in request order, with its status.
        records = read_results(s3_client, summary)
        assert [r["input"] for r in records] == inputs
        assert [r["status"] for r in records] == ["failed"] * failing + ["succeeded"] * (n - failing)
        assert float(_read(s3_client, records[-1]["output_location"])) == n
        if mode == "defers":
            (kwargs,) = kwargs_seen
            assert kwargs["invocations"] is None and kwargs["ledger_uri"] == summary["ledger_uri"]
        else:
            assert not kwargs_seen
        sizes[n] = (len(json.dumps(summary)), len(json.dumps(kwargs_seen[0])) if kwargs_seen else 0)
    assert endpoint_stats(endpoint)["async_submitted"] == 2020
    (small_xcom, small_kwargs), (large_xcom, large_kwargs) = sizes[20], sizes[2000]
    assert large_xcom < 16_384 and large_kwargs < 16_384, sizes
    # The same order of size: only the digits of the counts (and the ledger's path) differ.
    assert large_xcom - small_xcom < 64 and large_kwargs - small_kwargs < 64, sizes
