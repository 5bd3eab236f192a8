"""Secrets never reach logs, XCom or errors; SSE-KMS and ExpectedBucketOwner on every S3 call; IAM policies
under docs/iam/ equal the AWS actions the operators really call (recorded with botocore ``before-call`` hooks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pytest

from tests import local_control
from tests.airflow_support import ROOT, dagbag, ensure_db
from tests.reliability.proxy import FaultProxy
from tests.reliability.support import (
    Figures,
    aws_conn,
    env,
    features,
    list_keys,
    put_parquet,
    read_output,
    record_aws_calls,
    run_score,
    split,
)

pytestmark = pytest.mark.slow

OWNER = "123456789012"
LOGIN, PASSWORD = "AKIASENTINELLOGIN7Q", "SentinelSecretKey/Do+Not+Log+9f3a"
ATTRIBUTES = "tenant=SENTINEL-ATTR-5be1"
FEATURE = "0.123456789"  # a feature value as it appears in a CSV payload
NOTE = "SENTINEL-PASSTHRU-77a1"
PREDICTION = "987654.321"  # f0 + f1 + f2 of the planted rows


def _policy_actions(name: str) -> set[str]:
    doc = json.loads((ROOT / "docs" / "iam" / name).read_text())
    return {action for statement in doc["Statement"] for action in statement["Action"]}


def _dataset() -> pa.Table:
    table = features(range(300), poison={7, 150}, secret=NOTE)
    f0 = table["f0"].to_pylist()
    f1 = table["f1"].to_pylist()
    f2 = table["f2"].to_pylist()
    for i in range(20, 40):  # planted rows: the feature sentinel, and a prediction sentinel
        f0[i], f1[i], f2[i] = 987654.0 - 0.123456789 + 0.321, float(FEATURE), 0
    table = table.set_column(1, "f0", pa.array(f0, pa.float64()))
    table = table.set_column(2, "f1", pa.array(f1, pa.float64()))
    return table.set_column(3, "f2", pa.array(f2, pa.int32()))


def test_no_secret_leaks_sse_kms_owner_and_iam_policy(
    local_stack: Any,
    s3_client: Any,
    make_endpoint: Any,
    s3_prefix: str,
    tmp_path: Path,
    figures: Figures,
    capfd: pytest.CaptureFixture[str],
) -> None:
    kms = boto3.client(
        "kms",
        endpoint_url=local_stack.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key_id = kms.create_key(Description="smrt reliability")["KeyMetadata"]["Arn"]
    for half, rows in (("a", range(0, 150)), ("b", range(150, 300))):
        put_parquet(s3_client, f"{s3_prefix}in/{half}.parquet", _dataset().slice(rows.start, len(rows)))
    endpoint = make_endpoint("sum", faults={"poison_value": -999})
    # the local endpoint verifies SigV4: it must know the connection's key pair
    local_control.control_request(
        local_stack.runtime_endpoint_url, "PUT", "credentials", {"access_key_id": LOGIN, "secret_access_key": PASSWORD}
    )
    op = {
        "passthrough_columns": ["id", "note"],
        "max_error_ratio": 0.05,
        "s3_write_args": {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_id},
        "expected_bucket_owner": OWNER,
    }
    conf = {
        "endpoint_name": endpoint,
        "input_uri": s3_prefix + "in/",
        "output_uri": s3_prefix + "out/",
        "custom_attributes": ATTRIBUTES,
        "aws_conn_id": "r_secret",
        "op": op,
    }
    runs = []
    with FaultProxy(local_stack.s3_endpoint_url) as proxy, record_aws_calls() as recorder:
        service_config = {
            "s3": {"endpoint_url": proxy.url},
            "sagemaker-runtime": {"endpoint_url": local_stack.runtime_endpoint_url},
        }
        with env(**aws_conn("r_secret", login=LOGIN, password=PASSWORD, service_config=service_config)):
            runs.append(run_score(conf, tmp_path / "fresh"))  # score, with errors
            runs.append(run_score(conf, tmp_path / "resume"))  # everything done: reads the parts' footers
            # b.parquet is rewritten (same rows, new bytes): its old parts are stale. The overwrite run replaces
            # a's parts in place and deletes b's old ones once the new ones are committed (s3:DeleteObject).
            put_parquet(s3_client, f"{s3_prefix}in/b.parquet", _dataset().slice(150, 150), row_group_size=50)
            overwrite = {**conf, "op": {**op, "if_exists": "overwrite"}}
            runs.append(run_score(overwrite, tmp_path / "overwrite"))
            proxy.state.writes = 0
            proxy.state.fail_writes_after = 2  # two objects written, the third PutObject denied: discarded
            denied = {**conf, "output_uri": s3_prefix + "out-denied/"}
            runs.append(run_score(denied, tmp_path / "denied"))
    assert [r.state for r in runs] == ["success", "success", "success", "failed"], [r.error for r in runs]

    # Output correct, every object encrypted with the key.
    out = read_output(s3_client, s3_prefix + "out/")
    assert out.num_rows == 298 and FEATURE not in str(out.column_names)
    objects = list_keys(s3_client, s3_prefix + "out/")
    assert "_manifest.json" in objects and any(k.startswith("_errors/") for k in objects)
    for name in objects:
        bucket, key = split(s3_prefix + "out/" + name)
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption") == "aws:kms", name
        assert key_id.endswith(head.get("SSEKMSKeyId", "").rsplit("/", 1)[-1]), name

    # ExpectedBucketOwner on every S3 call that takes it (client side) and on every request (wire side).
    s3_calls = recorder.s3_params
    missing = [
        name
        for name, params, members in s3_calls
        if "ExpectedBucketOwner" in members and params.get("ExpectedBucketOwner") != OWNER
    ]
    assert s3_calls and not missing, sorted(set(missing))
    wire = [r for r in proxy.state.records if r.headers.get("x-amz-expected-bucket-owner") != OWNER]
    assert not wire, [(r.method, r.path, sorted(r.query)) for r in wire][:5]

    # The IAM policy equals what the code calls.
    called = recorder.actions()
    assert called == _policy_actions("batch-score.json"), called

    # No secret in any log, error, XCom, task log file or captured output.
    captured = capfd.readouterr()
    haystacks = {
        "log records": "\n".join(line for r in runs for line in r.logs),
        "errors": "\n".join(r.error for r in runs),
        "xcom": "\n".join(json.dumps(r.xcom()) for r in runs),
        "task log files": "\n".join(r.task_log_text() for r in runs),
        "stdout/stderr": captured.out + captured.err,
    }
    assert haystacks["log records"] and haystacks["xcom"]
    sentinels = {
        "login": LOGIN,
        "password": PASSWORD,
        "custom_attributes": ATTRIBUTES,
        "feature": FEATURE,
        "pass-through": NOTE,
        "prediction": PREDICTION,
    }
    leaks = [(s, where) for s, value in sentinels.items() for where, text in haystacks.items() if value in text]
    assert not leaks, leaks
    figures.record(
        "security_and_iam_batch",
        result="no leak; every object SSE-KMS; ExpectedBucketOwner on every S3 call",
        s3_calls_checked=len(s3_calls),
        s3_requests_checked=len(proxy.state.records),
        objects_checked=len(objects),
        log_lines_searched=len(haystacks["log records"].splitlines()),
        task_log_bytes_searched=len(haystacks["task log files"]),
        sentinels=sorted(sentinels),
        actions_called=sorted(called),
    )


def test_async_invoke_and_sensor_iam_policy(
    s3_client: Any, make_endpoint: Any, s3_prefix: str, figures: Figures
) -> None:
    inputs = []
    for k in range(3):
        bucket, key = split(f"{s3_prefix}async/in-{k}.csv")
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"1,2,3\n4,5,6\n")
        inputs.append(f"s3://{bucket}/{key}")
    endpoint = make_endpoint("sum")
    ensure_db()
    dag = dagbag().get_dag("t_async_sensor_poke")
    with record_aws_calls() as recorder:
        run = dag.test(run_conf={"endpoint_name": endpoint, "inputs": inputs})
    assert str(run.state) == "success"
    called = recorder.actions()
    assert called == _policy_actions("async-invoke-and-sensor.json"), sorted(set(recorder.calls))
    figures.record(
        "iam_async", result="policy equals calls", actions_called=sorted(called), operations=sorted(set(recorder.calls))
    )
