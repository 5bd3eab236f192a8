"""Extra links: the endpoint's console page after every run, the model's CloudWatch logs after a ModelError."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from airflow_provider_smrt.links import SageMakerEndpointLink, SageMakerModelLogsLink, parse_log_stream_arn
from airflow_provider_smrt.local.demo_data import write_demo_dataset
from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from airflow_provider_smrt.operators.invoke_endpoint_async import SageMakerInvokeEndpointAsyncOperator
from tests.support.dag_runs import run_dag

CONSOLE = "https://console.aws.amazon.com"


def test_operators_declare_both_links() -> None:
    for operator in (SageMakerBatchScoreOperator, SageMakerInvokeEndpointAsyncOperator):
        assert {type(link) for link in operator.operator_extra_links} == {SageMakerEndpointLink, SageMakerModelLogsLink}


def test_endpoint_link_format() -> None:
    link = SageMakerEndpointLink()
    conf = {"region_name": "eu-west-1", "aws_domain": "aws.amazon.com", "endpoint_name": "my-endpoint"}
    assert link.format_link(**conf) == f"{CONSOLE}/sagemaker/home?region=eu-west-1#/endpoints/my-endpoint"
    china = {**conf, "region_name": "cn-north-1", "aws_domain": SageMakerEndpointLink.get_aws_domain("aws-cn")}
    assert link.format_link(**china).startswith("https://console.amazonaws.cn/sagemaker/home?region=cn-north-1#")
    assert link.format_link(region_name="eu-west-1", aws_domain=None, endpoint_name="e") == ""


@pytest.mark.parametrize(
    ("arn", "expected"),
    [
        (
            "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/my-ep",
            ("aws", "us-east-1", "/aws/sagemaker/Endpoints/my-ep", None),
        ),
        (
            "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/my-ep:*",
            ("aws", "us-east-1", "/aws/sagemaker/Endpoints/my-ep", None),
        ),
        (
            "arn:aws-cn:logs:cn-north-1:123456789012:log-group:/aws/sagemaker/Endpoints/e:log-stream:AllTraffic/i-0a",
            ("aws-cn", "cn-north-1", "/aws/sagemaker/Endpoints/e", "AllTraffic/i-0a"),
        ),
    ],
)
def test_log_stream_arn_parsing(arn: str, expected: tuple[Any, ...]) -> None:
    location = parse_log_stream_arn(arn)
    assert location is not None
    assert (location.partition, location.region, location.log_group, location.log_stream) == expected


@pytest.mark.parametrize("arn", [None, "", "arn:aws:s3:::bucket", "not an arn"])
def test_unparseable_arns_give_no_link(arn: str | None) -> None:
    assert parse_log_stream_arn(arn) is None


def test_model_logs_link_format() -> None:
    link = SageMakerModelLogsLink()
    conf = {"region_name": "us-east-1", "aws_domain": "aws.amazon.com", "log_group": "/aws/sagemaker/Endpoints/e"}
    group_url = f"{CONSOLE}/cloudwatch/home?region=us-east-1#logsV2:log-groups/log-group/"
    group_url += "%2Faws%2Fsagemaker%2FEndpoints%2Fe"
    assert link.format_link(**conf) == group_url
    assert link.format_link(**conf, log_stream="AllTraffic/i-0") == group_url + "/log-events/AllTraffic%2Fi-0"
    assert link.format_link(**{**conf, "log_group": None}) == ""  # persisted empty when there was no ModelError


def _seed(s3_client: Any, s3_prefix: str, rows: int, date: str) -> dict[str, str]:
    """Demo rows in the partition of ``date`` (the example DAG reads ``<input_root>/ds=<date>/``)."""
    write_demo_dataset(s3_client=s3_client, uri=f"{s3_prefix}in/ds={date}/", rows=rows, files=1)
    return {"input_root": s3_prefix + "in", "output_root": s3_prefix + "out"}


def test_links_persisted_after_a_run(s3_client: Any, s3_prefix: str) -> None:
    conf = _seed(s3_client, s3_prefix, 100, "2026-02-01")
    run = run_dag("smrt_example_batch_score", conf, logical_date=datetime(2026, 2, 1, tzinfo=timezone.utc))
    assert run.state == "success", run.states
    assert run.xcom("score", key=SageMakerEndpointLink.key) == {
        "region_name": "us-east-1",
        "aws_domain": "aws.amazon.com",
        "endpoint_name": "smrt-demo",
    }
    # what the UI shows: Airflow formats every link when the task finishes
    expected = f"{CONSOLE}/sagemaker/home?region=us-east-1#/endpoints/smrt-demo"
    assert run.xcom("score", key=SageMakerEndpointLink().xcom_key) == expected
    assert run.xcom("score", key=SageMakerModelLogsLink().xcom_key) == ""


def test_logs_link_persisted_after_a_model_error(s3_client: Any, s3_prefix: str, make_endpoint: Any) -> None:
    endpoint = make_endpoint("llm")  # the llm model rejects text/csv: every request is a ModelError (415)
    conf = {**_seed(s3_client, s3_prefix, 8, "2026-02-02"), "endpoint_name": endpoint}
    run = run_dag("smrt_example_batch_score", conf, logical_date=datetime(2026, 2, 2, tzinfo=timezone.utc))
    assert run.state == "failed" and run.states["score"] == "failed", run.states
    persisted = run.xcom("score", key=SageMakerModelLogsLink.key)
    assert persisted["log_group"] == f"/aws/sagemaker/Endpoints/{endpoint}"
    expected = (
        f"{CONSOLE}/cloudwatch/home?region=us-east-1#logsV2:log-groups/log-group/"
        f"%2Faws%2Fsagemaker%2FEndpoints%2F{endpoint}"
    )
    assert run.xcom("score", key=SageMakerModelLogsLink().xcom_key) == expected
    assert run.xcom("score", key=SageMakerEndpointLink().xcom_key).endswith(f"#/endpoints/{endpoint}")
