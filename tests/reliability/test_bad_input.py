"""Bad input through Airflow (``dag.test()``): each error names the thing and the fix; nothing is written."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.hooks.sagemaker_runtime import SageMakerRuntimeHook
from airflow_provider_smrt.local.s3server import free_port
from tests.support.datasets import features
from tests.support.figures import Figures
from tests.support.s3_objects import list_keys, put_parquet, split
from tests.support.scoring_rig import ScoringRig

pytestmark = pytest.mark.slow


@dataclass
class Case:
    """A bad input: how to make it, what the error must say, and the parameters that differ."""

    setup: Callable[[Any, str], dict[str, Any]]
    expect: tuple[str, ...]
    conn_extra: dict[str, Any] | None = None
    op: dict[str, Any] = field(default_factory=dict)


def _put_bytes(s3: Any, uri: str, body: bytes) -> None:
    bucket, key = split(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def _good(s3: Any, prefix: str) -> dict[str, Any]:
    put_parquet(s3, prefix + "in/a.parquet", features(range(100)))
    return {}


def _missing(s3: Any, prefix: str) -> dict[str, Any]:
    return {"input_uri": prefix + "does-not-exist/"}


def _empty_prefix(s3: Any, prefix: str) -> dict[str, Any]:
    _put_bytes(s3, prefix + "in/_SUCCESS", b"")
    _put_bytes(s3, prefix + "in/.hidden", b"x")
    return {}


def _not_parquet(s3: Any, prefix: str) -> dict[str, Any]:
    _good(s3, prefix)
    _put_bytes(s3, prefix + "in/b.csv", b"id,f0\n1,2\n")
    return {}


def _corrupt(s3: Any, prefix: str) -> dict[str, Any]:
    _good(s3, prefix)
    _put_bytes(s3, prefix + "in/b.parquet", b"PAR1" + b"\x00garbage" * 50 + b"PAR1")
    return {}


def _schemas_differ(s3: Any, prefix: str) -> dict[str, Any]:
    _good(s3, prefix)
    other = features(range(100, 200))
    other = other.set_column(other.schema.get_field_index("f1"), "f1", pa.array(["x"] * 100))
    put_parquet(s3, prefix + "in/b.parquet", other)
    return {}


def _list_column(s3: Any, prefix: str) -> dict[str, Any]:
    table = features(range(50))
    table = table.set_column(table.schema.get_field_index("f2"), "f2", pa.array([[1.0, 2.0]] * 50))
    put_parquet(s3, prefix + "in/a.parquet", table)
    return {}


def _huge_row(s3: Any, prefix: str) -> dict[str, Any]:
    table = pa.table({"id": pa.array([1, 2], pa.int64()), "f0": ["y" * 7_000_000, "small"]})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    _put_bytes(s3, prefix + "in/a.parquet", buf.getvalue())
    return {"content_type": "application/json"}  # text/csv takes no text features


def _text_features_as_csv(s3: Any, prefix: str) -> dict[str, Any]:
    table = features(range(100))
    put_parquet(s3, prefix + "in/a.parquet", table.set_column(1, "f0", pa.array([str(i) for i in range(100)])))
    return {}


def _output_inside_input(s3: Any, prefix: str) -> dict[str, Any]:
    _good(s3, prefix)
    return {"output_uri": prefix + "in/scored/"}


def _no_bucket(s3: Any, prefix: str) -> dict[str, Any]:
    _good(s3, prefix)
    return {"output_uri": "s3://smrt-no-such-bucket/out/"}


def _no_endpoint(s3: Any, prefix: str) -> dict[str, Any]:
    _good(s3, prefix)
    return {"endpoint_name": "no-such-endpoint"}


CASES: dict[str, Case] = {
    "missing_input": Case(_missing, ("does-not-exist/", "matched no objects", "allow_empty_input")),
    "empty_prefix": Case(_empty_prefix, ("matched no objects", "allow_empty_input")),
    "non_parquet_object": Case(_not_parquet, ("b.csv", "not a Parquet file", "remove it")),
    "corrupt_parquet": Case(_corrupt, ("b.parquet", "not a readable Parquet file", "replace or remove")),
    "schemas_differ": Case(_schemas_differ, ("'f1'", "b.parquet", "same type")),
    "missing_feature_column": Case(_good, ("'f9'", "missing", "feature_columns"), op={"feature_columns": ["f0", "f9"]}),
    "list_column_with_csv": Case(_list_column, ("'f2'", "text/csv")),
    "row_over_payload_limit": Case(
        # The small row fails at the model (a text feature): a budget of 1.0 keeps the error budget from
        # stopping the run before the oversized row's error, which a worker meets at the same time.
        _huge_row,
        ("row 0", "request limit", "SageMakerInvokeEndpointAsyncOperator"),
        op={"feature_columns": ["f0"], "max_error_ratio": 1.0},
    ),
    "text_features_as_csv": Case(_text_features_as_csv, ("'f0' (string)", "application/json", "encoder=")),
    "endpoint_does_not_exist": Case(
        _no_endpoint, ("no-such-endpoint", "not found", "endpoint name"), op={"max_attempts": 2}
    ),
    "runtime_unreachable_wrong_region": Case(
        _good, ("transport failure", "network path"), conn_extra={"closed_port": True}, op={"max_attempts": 2}
    ),
    "custom_attributes_non_ascii": Case(_good, ("custom_attributes", "ASCII")),
    "custom_attributes_over_1024": Case(_good, ("custom_attributes", "1024")),
    "output_inside_input": Case(_output_inside_input, ("overlap", "outside the input")),
    "output_bucket_missing": Case(_no_bucket, ("smrt-no-such-bucket", "NoSuchBucket", "bucket exists")),
    "prediction_count_mismatch": Case(
        _good,
        ("a.parquet rows ", "expected 50 predictions, got 49", "one prediction per input row"),
        op={"decoder": "tests.support.faulty_decoders.drop_last_row"},
    ),
}

SECRET_ATTRIBUTES = {"custom_attributes_non_ascii": "tenant=ünïcode", "custom_attributes_over_1024": "a=" + "b" * 1100}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_clearly_and_writes_nothing(name: str, rig: ScoringRig) -> None:
    case = CASES[name]
    endpoint = rig.make_endpoint("sum")
    conf = rig.conf(endpoint, custom_attributes=SECRET_ATTRIBUTES.get(name, ""), op=dict(case.op))
    conf.update(case.setup(rig.s3, rig.prefix))
    variables: dict[str, str] = {}
    if case.conn_extra:
        # A connection whose sagemaker-runtime endpoint URL is a closed port, as a wrong region's (or a
        # mistyped VPC endpoint's) URL that nothing answers on: the connection is refused.
        variables = rig.connection("r_wrong_region", runtime=f"http://127.0.0.1:{free_port()}")
        conf["aws_conn_id"] = "r_wrong_region"
    os.environ.update(variables)  # kept set: unsetting a connection variable mid-session confuses Airflow's cache
    run = rig.run(conf, "report")
    assert run.states["score"] == "failed", f"{name}: the task did not fail"
    message = run.error("score")
    for text in case.expect:
        assert text in message, f"{name}: {text!r} not in {message!r}"
    if name in SECRET_ATTRIBUTES:
        assert SECRET_ATTRIBUTES[name] not in message and "ünïcode" not in message
    out_uri = conf["output_uri"]
    if out_uri.startswith("s3://smrt-local/"):
        assert list_keys(rig.s3, out_uri) == [], f"{name}: something was written to the output"
    sent = rig.endpoint_stats(endpoint)["rows_ok"]
    rig.figures.record(
        f"bad_input_{name}",
        result="task failed",
        error=message.split(":", 1)[0],
        message=message[:400],
        objects_written=0,
        rows_scored_by_endpoint=sent,
    )


@pytest.mark.parametrize(
    ("params", "expect"),
    [
        ({"request_ttl_seconds": 59}, "request_ttl_seconds"),
        ({"request_ttl_seconds": 21_601}, "request_ttl_seconds"),
        ({"invocation_timeout_seconds": 0}, "invocation_timeout_seconds"),
        ({"invocation_timeout_seconds": 3_601}, "invocation_timeout_seconds"),
    ],
)
def test_async_ttl_and_timeout_out_of_range(params: dict[str, int], expect: str, figures: Figures) -> None:
    hook = SageMakerRuntimeHook(aws_conn_id=None)
    with pytest.raises(ParameterValidationError) as err:
        hook.validate_invoke_endpoint_async("ep", input_location="s3://b/k", **params)
    assert expect in str(err.value)
    figures.record(
        f"bad_input_async_{'_'.join(f'{k}_{v}' for k, v in params.items())}", result="rejected", message=str(err.value)
    )
