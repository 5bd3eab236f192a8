"""Extra links of the operators: the endpoint in the SageMaker console, and the model's CloudWatch logs.

Both build on the Amazon provider's :class:`~airflow.providers.amazon.aws.links.base_aws.BaseAwsLink`:
the operator calls :meth:`persist` during ``execute`` (region, partition and the link's fields go to
XCom under the link's ``key``), and Airflow formats the URL when the task finishes.

- :class:`SageMakerEndpointLink`: ``https://console.aws.amazon.com/sagemaker/home?region=...#/endpoints/NAME``
  (``console.amazonaws.cn`` and ``console.amazonaws-us-gov.com`` in the other partitions).
- :class:`SageMakerModelLogsLink`: the CloudWatch log group (and stream, when the ARN names one) from a
  ModelError's ``LogStreamArn``; persisted only when a request failed with a ModelError.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

__all__ = ["LogStreamLocation", "SageMakerEndpointLink", "SageMakerModelLogsLink", "parse_log_stream_arn"]

_LOGS_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):logs:(?P<region>[a-z0-9-]+):(?P<account>\d*):log-group:(?P<group>[^:]+)"
    r"(?::log-stream:(?P<stream>.+?))?(?::\*)?$"
)


class SageMakerEndpointLink(BaseAwsLink):
    """The endpoint's page in the SageMaker console."""

    name = "SageMaker Endpoint"
    key = "smrt_sagemaker_endpoint"
    format_str = BASE_AWS_CONSOLE_LINK + "/sagemaker/home?region={region_name}#/endpoints/{endpoint_name}"

    def format_link(self, **kwargs: Any) -> str:
        """Escape the endpoint name (only letters, digits and hyphens are valid, but it may be templated)."""
        if not kwargs.get("endpoint_name") or not kwargs.get("aws_domain"):
            return ""
        return super().format_link(**{**kwargs, "endpoint_name": quote_plus(str(kwargs["endpoint_name"]))})


class SageMakerModelLogsLink(BaseAwsLink):
    """The model container's CloudWatch logs, from the ``LogStreamArn`` of a ModelError."""

    name = "SageMaker Model Logs"
    key = "smrt_sagemaker_model_logs"
    format_str = BASE_AWS_CONSOLE_LINK + "/cloudwatch/home?region={region_name}#logsV2:log-groups/log-group/{log_group}"

    def format_link(self, **kwargs: Any) -> str:
        """The log group's page, or the log stream's events when the ARN named a stream."""
        group = kwargs.get("log_group")
        if not group or not kwargs.get("aws_domain"):
            return ""
        url = super().format_link(**{**kwargs, "log_group": quote_plus(group)})
        stream = kwargs.get("log_stream")
        if url and stream:
            url += "/log-events/" + quote_plus(stream)
        return url

    @classmethod
    def persist_arn(cls, context: Context, operator: Any, log_stream_arn: str) -> bool:
        """Persist the link of a ``LogStreamArn`` (region and partition from the ARN); False if it does not parse."""
        location = parse_log_stream_arn(log_stream_arn)
        if location is None:
            return False
        cls.persist(
            context=context,
            operator=operator,
            region_name=location.region,
            aws_partition=location.partition,
            log_group=location.log_group,
            log_stream=location.log_stream,
        )
        return True


    @classmethod
    def persist_endpoint_log_group(cls, context: Context, operator: Any, endpoint_name: str) -> None:
        """Persist the link of the endpoint's log group (``/aws/sagemaker/Endpoints/NAME``, the hook's region).

        For a run that fails on ModelErrors without having seen one itself (a rerun that resumes parts
        whose rows an earlier try isolated into ``_errors/``): no ``LogStreamArn`` to read it from.
        """
        try:
            hook = operator.hook
            region_name, partition = hook.conn_region_name, hook.conn_partition
        except Exception:  # a link is never worth failing the task
            log.debug("no region or partition for the model-logs link", exc_info=True)
            return
        cls.persist(
            context=context,
            operator=operator,
            region_name=region_name,
            aws_partition=partition,
            log_group=f"/aws/sagemaker/Endpoints/{endpoint_name}",
            log_stream=None,
        )


@dataclass(frozen=True)
class LogStreamLocation:
    """Where a CloudWatch Logs ARN points."""

    partition: str
    region: str
    log_group: str
    log_stream: str | None = None


def parse_log_stream_arn(arn: str | None) -> LogStreamLocation | None:
    """Parse ``arn:PARTITION:logs:REGION:ACCOUNT:log-group:GROUP[:log-stream:STREAM]`` (a trailing ``:*`` is ignored).

    SageMaker's ``LogStreamArn`` usually names the endpoint's log group
    (``/aws/sagemaker/Endpoints/NAME``). Returns None for anything else.
    """
    if not arn:
        return None
    match = _LOGS_ARN.match(arn.strip())
    if match is None:
        return None
    return LogStreamLocation(
        partition=match["partition"],
        region=match["region"],
        log_group=match["group"],
        log_stream=match["stream"] or None,
    )


def persist_links(context: Context, operator: Any, endpoint_name: str | None) -> None:
    """Persist :class:`SageMakerEndpointLink` (the hook's region and partition) and an empty model-logs link.

    The model-logs link is filled in by :meth:`SageMakerModelLogsLink.persist_arn` after a ModelError;
    persisting it empty first spares Airflow a failed XCom lookup (and an error line in the task log)
    when it renders the links of a run without one.
    """
    try:
        hook = operator.hook
        region_name, partition = hook.conn_region_name, hook.conn_partition
    except Exception:  # a link is never worth failing the task
        log.debug("no region or partition for the endpoint link", exc_info=True)
        return
    if endpoint_name:
        SageMakerEndpointLink.persist(
            context=context,
            operator=operator,
            region_name=region_name,
            aws_partition=partition,
            endpoint_name=endpoint_name,
        )
    SageMakerModelLogsLink.persist(
        context=context, operator=operator, region_name=region_name, aws_partition=partition, log_group=None
    )
