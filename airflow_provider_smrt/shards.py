"""``plan_shards``: split one input into balanced shards for a mapped ``SageMakerBatchScoreOperator``.

Use it as a task and map the scoring operator over its result; every shard writes into the same
``output_uri`` (each mapped task its own ``_manifest-<map index>.json``)::

    from airflow.sdk import task

    shards = task(plan_shards, task_id="plan_shards")(
        input_uri="s3://features/churn/ds={{ ds }}/", num_shards=4
    )
    SageMakerBatchScoreOperator.partial(
        task_id="score", endpoint_name="churn-xgb", output_uri="s3://predictions/churn/ds={{ ds }}/",
        pool="sagemaker-churn-xgb", pool_slots=8, concurrency=8,
    ).expand(input_uri=shards)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from airflow_provider_smrt._compat import AirflowFailException
from airflow_provider_smrt.exceptions import InputDataError, ParameterValidationError
from airflow_provider_smrt.scoring import shards as _shards
from airflow_provider_smrt.scoring.storage import Storage


def plan_shards(
    input_uri: str | Sequence[str],
    num_shards: int,
    *,
    aws_conn_id: str | None = "aws_default",
    region_name: str | None = None,
    verify: bool | str | None = None,
    botocore_config: dict[str, Any] | None = None,
    expected_bucket_owner: str | None = None,
    allow_empty_input: bool = False,
) -> list[list[str]]:
    """At most ``num_shards`` lists of input URIs of about equal rows, one per mapped scoring task.

    Whole files where they fit, row-group ranges (``...parquet#row_groups=4:9``) of files too large for
    one shard; the union of the shards is the input, each row in exactly one shard (see
    :func:`airflow_provider_smrt.scoring.shards.plan_shards`). Reads only the Parquet footers, through
    the Airflow AWS connection ``aws_conn_id``. The result is JSON (an XCom value). An input that
    matches nothing (without ``allow_empty_input``) or is not Parquet fails the task without retries:
    a retry cannot fix it.
    """
    s3_client = S3Hook(
        aws_conn_id=aws_conn_id, region_name=region_name, verify=verify, config=botocore_config
    ).get_conn()
    storage = Storage(s3_client=s3_client, expected_bucket_owner=expected_bucket_owner)
    try:
        return _shards.plan_shards(storage, input_uri, int(num_shards), allow_empty_input=allow_empty_input)
    except (InputDataError, ParameterValidationError) as err:
        raise AirflowFailException(str(err)) from err
