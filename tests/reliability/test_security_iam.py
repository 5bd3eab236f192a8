"""Secrets never reach logs, XCom or errors; SSE-KMS and ExpectedBucketOwner on every S3 call; IAM policies
under docs/iam/ equal the AWS actions the operators really call (recorded with botocore ``before-call`` hooks)."""

from __future__ import annotations

import json

import boto3
import pyarrow as pa
import pytest

from tests.support import local_control
from tests.support.aws_calls import record_aws_calls
from tests.support.connections import env
from tests.support.dag_runs import ROOT, run_dag
from tests.support.datasets import features
from tests.support.fault_proxy import FaultProxy
from tests.support.s3_objects import list_keys, put_parquet, read_output, split
from tests.support.scoring_rig import ScoringRig

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


def test_no_secret_leaks_sse_kms_owner_and_iam_policy(capfd: pytest.CaptureFixture[str], rig: ScoringRig) -> None:
    kms = boto3.client(
        "kms",
        endpoint_url=rig.stack.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key_id = kms.create_key(Description="smrt reliability")["KeyMetadata"]["Arn"]
    for half, rows in (("a", range(0, 150)), ("b", range(150, 300))):
        put_parquet(rig.s3, f"{rig.prefix}in/{half}.parquet", _dataset().slice(rows.start, len(rows)))
    endpoint = rig.make_endpoint("sum", faults={"poison_value": -999})
    # the local endpoint verifies SigV4: it must know the connection's key pair
    local_control.control_request(
        rig.stack.runtime_endpoint_url, "PUT", "credentials", {"access_key_id": LOGIN, "secret_access_key": PASSWORD}
    )
    op = {
        "passthrough_columns": ["id", "note"],
        "max_error_ratio": 0.05,
        "s3_write_args": {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": key_id},
        "expected_bucket_owner": OWNER,
    }
    conf = rig.conf(endpoint, custom_attributes=ATTRIBUTES, aws_conn_id="r_secret", op=op)
    runs = []
    with FaultProxy(rig.stack.s3_endpoint_url) as proxy, record_aws_calls() as recorder:
        with env(**rig.connection("r_secret", s3=proxy.url, login=LOGIN, password=PASSWORD)):
            runs.append(rig.run(conf, "fresh"))  # score, with errors
            runs.append(rig.run(conf, "resume"))  # everything done: reads the parts' footers
            # b.parquet is rewritten (same rows, new bytes): its old parts are stale. The overwrite run replaces
            # a's parts in place and deletes b's old ones once the new ones are committed (s3:DeleteObject).
            put_parquet(rig.s3, f"{rig.prefix}in/b.parquet", _dataset().slice(150, 150), row_group_size=50)
            overwrite = {**conf, "op": {**op, "if_exists": "overwrite"}}
            runs.append(rig.run(overwrite, "overwrite"))
            proxy.state.writes = 0
            proxy.state.fail_writes_after = 2  # two objects written, the third PutObject denied: discarded
            denied = {**conf, "output_uri": rig.prefix + "out-denied/"}
            runs.append(rig.run(denied, "denied"))
    assert [r.state for r in runs] == ["success", "success", "success", "failed"], [r.error("score") for r in runs]

    # Output correct, every object encrypted with the key.
    out = read_output(rig.s3, rig.output_uri)
    assert out.num_rows == 298 and FEATURE not in str(out.column_names)
    objects = list_keys(rig.s3, rig.output_uri)
    assert "_manifest.json" in objects and any(k.startswith("_errors/") for k in objects)
    for name in objects:
        bucket, key = split(rig.output_uri + name)
        head = rig.s3.head_object(Bucket=bucket, Key=key)
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
        "log records": "\n".join(r.log_text for r in runs),
        "errors": "\n".join(r.error("score") for r in runs),
        "xcom": "\n".join(json.dumps(r.xcom("score")) for r in runs),
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
    rig.figures.record(
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


def test_async_invoke_and_sensor_iam_policy(rig: ScoringRig) -> None:
    inputs = []
    for k in range(3):
        bucket, key = split(f"{rig.prefix}async/in-{k}.csv")
        rig.s3.put_object(Bucket=bucket, Key=key, Body=b"1,2,3\n4,5,6\n")
        inputs.append(f"s3://{bucket}/{key}")
    endpoint = rig.make_endpoint("sum")
    with record_aws_calls() as recorder:
        run = run_dag("t_async_sensor_poke", {"endpoint_name": endpoint, "inputs": inputs})
    assert run.state == "success"
    called = recorder.actions()
    assert called == _policy_actions("async-invoke-and-sensor.json"), sorted(set(recorder.calls))
    rig.figures.record(
        "iam_async", result="policy equals calls", actions_called=sorted(called), operations=sorted(set(recorder.calls))
    )
