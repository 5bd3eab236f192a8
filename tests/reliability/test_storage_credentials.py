"""S3 write failures and expiring credentials, through Airflow (``dag.test()``) and a fault-injecting proxy."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError

from tests.support.connections import aws_conn, env
from tests.support.datasets import expected_sum, put_files
from tests.support.fault_proxy import FaultProxy
from tests.support.s3_objects import check_parts_complete, incomplete_uploads, list_keys, read_output
from tests.support.scoring_rig import ScoringRig

pytestmark = pytest.mark.slow

FILES, ROWS = 6, 200


def test_failing_output_write_fails_clearly_and_rerun_completes(rig: ScoringRig) -> None:
    """Between the operator and S3, a proxy denies every write after the 3rd (3 parts, one PutObject each)."""
    data = put_files(rig.s3, rig.input_uri, files=FILES, rows=ROWS)
    endpoint = rig.make_endpoint("sum")
    conf = rig.conf(endpoint, aws_conn_id="r_s3_proxy", op={"concurrency": 1})
    with FaultProxy(rig.stack.s3_endpoint_url) as proxy:
        proxy.state.fail_writes_after = 3
        with env(**rig.connection("r_s3_proxy", s3=proxy.url)):
            run = rig.run(conf, "first")
            assert run.states["score"] == "failed"
            error = run.error("score")
            assert "OutputError: could not write s3://" in error, error
            assert "AccessDenied" in error and "s3:PutObject" in error and "rerun" in error
            done = check_parts_complete(rig.s3, rig.output_uri, ROWS)
            assert len(done) == 3, done  # nothing already written was lost
            keys = list_keys(rig.s3, rig.output_uri)
            assert "_manifest.json" not in keys
            assert not incomplete_uploads(rig.s3, rig.output_uri)
            denied = proxy.state.writes_denied
            before = rig.endpoint_stats(endpoint)["rows_ok"]
            proxy.state.fail_writes_after = None  # the policy is fixed
            rerun = rig.run(conf, "rerun")
    assert rerun.succeeded, rerun.error("score")
    resent = rig.endpoint_stats(endpoint)["rows_ok"] - before
    assert resent == (FILES - len(done)) * ROWS
    out = read_output(rig.s3, rig.output_uri)
    ids = out["id"].to_pylist()
    assert len(ids) == len(set(ids)) == FILES * ROWS
    assert dict(zip(ids, out["prediction"].to_pylist(), strict=True)) == pytest.approx(expected_sum(data))
    rig.figures.record(
        "s3_write_denied_after_3_writes",
        result="task failed with OutputError; rerun success",
        units=FILES,
        units_kept=len(done),
        writes_denied=denied,
        rows_resent=resent,
        rows_lost=FILES * ROWS - len(set(ids)),
        rows_duplicated=len(ids) - len(set(ids)),
    )


def test_expiring_session_credentials_refresh_mid_run(monkeypatch: pytest.MonkeyPatch, rig: ScoringRig) -> None:
    """A connection with ``role_arn``: STS (moto, behind the proxy) issues credentials that live 2.5 s; the proxy
    rejects any S3 or SageMaker request signed with an expired key, as AWS does (ExpiredToken).

    botocore refreshes 15 min (advisory) / 10 min (mandatory) before expiry; the test scales those windows to
    1.5 s / 1 s (time compressed 600 times), so a 2.5-s credential behaves as a 25-min one would in production.
    """
    monkeypatch.setattr(RefreshableCredentials, "_advisory_refresh_timeout", 1.5)
    monkeypatch.setattr(RefreshableCredentials, "_mandatory_refresh_timeout", 1.0)
    files, rows = 20, 200
    data = put_files(rig.s3, rig.input_uri, files=files, rows=rows)
    endpoint = rig.make_endpoint("sum", faults={"latency_ms": 100})
    conf = rig.conf(endpoint, aws_conn_id="r_role", op={"concurrency": 2})
    with (
        FaultProxy(rig.stack.s3_endpoint_url) as aws,
        FaultProxy(rig.stack.runtime_endpoint_url, error_style="json") as runtime,
    ):
        runtime.state = aws.state  # one table of issued credentials for both
        aws.state.credential_lifetime = 2.5
        extra = {
            "role_arn": "arn:aws:iam::123456789012:role/smrt-scoring",
            "assume_role_method": "assume_role",
            "service_config": {
                "sts": {"endpoint_url": aws.url},
                "s3": {"endpoint_url": aws.url},
                "sagemaker-runtime": {"endpoint_url": runtime.url},
            },
        }
        with env(**aws_conn("r_role", **extra)):
            run = rig.run(conf, "run")
        state = aws.state
        keys_used = {r.access_key for r in state.records if r.access_key and r.access_key in state.issued}
        runtime_keys = {r.access_key for r in state.records if r.path.startswith("/endpoints/") and r.access_key}
        # The proxy really enforces expiry: an expired key is refused.
        expired = next(key for key, expiry in state.issued.items() if expiry < __import__("time").time())
        probe = boto3.client(
            "s3",
            endpoint_url=aws.url,
            region_name="us-east-1",
            aws_access_key_id=expired,
            aws_secret_access_key="x",
            aws_session_token="x",
            config=Config(retries={"total_max_attempts": 1}),
        )
        with pytest.raises(ClientError) as refused:
            probe.list_objects_v2(Bucket="smrt-local", Prefix="x")
        assert refused.value.response["Error"]["Code"] == "ExpiredToken"
    assert run.succeeded, run.error("score")
    assert state.expired_rejections == 1  # only the probe: the run never used an expired credential
    assert state.assume_role_calls >= 3, state.assume_role_calls
    assert len(runtime_keys & set(state.issued)) >= 2, "InvokeEndpoint never used refreshed credentials"
    out = read_output(rig.s3, rig.output_uri)
    ids = out["id"].to_pylist()
    assert len(ids) == len(set(ids)) == files * rows
    assert dict(zip(ids, out["prediction"].to_pylist(), strict=True)) == pytest.approx(expected_sum(data))
    rig.figures.record(
        "credentials_expiring_mid_run",
        result="success",
        credential_lifetime_seconds=2.5,
        scoring_seconds=run.xcom("score")["elapsed_seconds"],
        assume_role_calls=state.assume_role_calls,
        distinct_access_keys_used=len(keys_used),
        distinct_access_keys_on_invoke_endpoint=len(runtime_keys),
        requests_rejected_as_expired=state.expired_rejections - 1,
        rows_lost=files * rows - len(set(ids)),
        rows_duplicated=len(ids) - len(set(ids)),
    )
