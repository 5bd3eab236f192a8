"""S3 clients from an Airflow AWS connection: the one way the operators, the sensor and the trigger build them.

The connection's credentials, region, endpoint URL and extras are read by the Amazon provider's
:class:`~airflow.providers.amazon.aws.hooks.s3.S3Hook`; nothing here handles credentials.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook


def s3_hook(
    *,
    aws_conn_id: str | None = "aws_default",
    region_name: str | None = None,
    verify: bool | str | None = None,
    botocore_config: dict[str, Any] | None = None,
) -> S3Hook:
    """The S3 hook of a connection (``botocore_config``: botocore ``Config`` keyword arguments)."""
    return S3Hook(aws_conn_id=aws_conn_id, region_name=region_name, verify=verify, config=botocore_config)


def s3_client(
    *,
    aws_conn_id: str | None = "aws_default",
    region_name: str | None = None,
    verify: bool | str | None = None,
    botocore_config: dict[str, Any] | None = None,
) -> Any:
    """A boto3 S3 client of a connection (thread-safe: share it between threads)."""
    hook = s3_hook(aws_conn_id=aws_conn_id, region_name=region_name, verify=verify, botocore_config=botocore_config)
    return hook.get_conn()


async def async_s3_client(
    *,
    aws_conn_id: str | None = "aws_default",
    region_name: str | None = None,
    verify: bool | str | None = None,
    botocore_config: dict[str, Any] | None = None,
) -> Any:
    """An aiobotocore S3 client of a connection: use it as ``async with await async_s3_client(...) as client``."""
    hook = s3_hook(aws_conn_id=aws_conn_id, region_name=region_name, verify=verify, botocore_config=botocore_config)
    return await hook.get_async_conn()


class S3ClientMixin:
    """``self.s3_client`` for an Amazon provider operator or sensor, from its own connection parameters."""

    aws_conn_id: str | None
    region_name: str | None
    verify: bool | str | None
    botocore_config: dict[str, Any] | None

    @cached_property
    def s3_client(self) -> Any:
        """A boto3 S3 client from the task's AWS connection (created once per task instance)."""
        return s3_client(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            botocore_config=self.botocore_config,
        )
