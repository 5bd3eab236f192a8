"""The whole local stack: moto's S3 server (child process) plus the local SageMaker Runtime endpoint server."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

from airflow_provider_smrt.local.endpoint import EndpointServer
from airflow_provider_smrt.local.s3server import MotoS3Server
from airflow_provider_smrt.local.state import LOCAL_BUCKET
from airflow_provider_smrt.local.wire import REGION

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class LocalStack:
    """Start S3 and the runtime endpoint on loopback; a context manager that always stops both.

    :param host: the address both servers bind.
    :param s3_port: moto's port (0: a free one).
    :param runtime_port: the endpoint server's port (0: a free one).
    :param default_endpoints: create ``smrt-demo``, ``smrt-sum`` and ``smrt-llm``.
    :param verify_signatures: check SigV4 on every invocation (``None``: on unless
        ``SMRT_LOCAL_VERIFY_SIGNATURES=0``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        s3_port: int = 0,
        runtime_port: int = 0,
        default_endpoints: bool = True,
        verify_signatures: bool | None = None,
    ) -> None:
        self.host = host
        self._verify_signatures = verify_signatures
        self._s3 = MotoS3Server(host=host, port=s3_port)
        self._runtime_port = runtime_port
        self._default_endpoints = default_endpoints
        self._endpoint: EndpointServer | None = None

    @property
    def s3_endpoint_url(self) -> str:
        """moto's S3 URL."""
        return self._s3.url

    @property
    def runtime_endpoint_url(self) -> str:
        """The SageMaker Runtime URL (also serves ``/_local/``)."""
        if self._endpoint is None:
            raise RuntimeError("the stack is not running")
        return self._endpoint.url

    @property
    def endpoint_server(self) -> EndpointServer:
        """The running endpoint server (its ``registry`` holds the endpoints)."""
        if self._endpoint is None:
            raise RuntimeError("the stack is not running")
        return self._endpoint

    def start(self) -> LocalStack:
        """Start both servers and create the ``smrt-local`` bucket; on any failure stop what started."""
        try:
            self._s3.launch()  # moto starts while the endpoint server trains its demo model
            self._endpoint = EndpointServer(
                host=self.host,
                port=self._runtime_port,
                s3_endpoint_url=self.s3_endpoint_url,
                default_endpoints=self._default_endpoints,
                verify_signatures=self._verify_signatures,
                credentials={CREDENTIALS["aws_access_key_id"]: CREDENTIALS["aws_secret_access_key"]},
            )
            self._endpoint.start()
            self._s3.wait_ready()
            self._s3.create_bucket(LOCAL_BUCKET)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers (idempotent)."""
        endpoint, self._endpoint = self._endpoint, None
        try:
            if endpoint is not None:
                endpoint.stop()
        finally:
            self._s3.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def s3_client(self) -> Any:
        """A boto3 S3 client on the local S3 server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint_url,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
            **CREDENTIALS,
        )

    def airflow_connection(self) -> str:
        """The JSON value of ``AIRFLOW_CONN_AWS_DEFAULT`` pointing both services at this stack."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": CREDENTIALS["aws_access_key_id"],
                "password": CREDENTIALS["aws_secret_access_key"],
                "extra": {
                    "region_name": REGION,
                    "service_config": {
                        "s3": {"endpoint_url": self.s3_endpoint_url},
                        "sagemaker-runtime": {"endpoint_url": self.runtime_endpoint_url},
                    },
                },
            }
        )

    def environment(self) -> dict[str, str]:
        """The environment variables a program needs to use this stack."""
        return {
            "AIRFLOW_CONN_AWS_DEFAULT": self.airflow_connection(),
            "SMRT_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "SMRT_RUNTIME_ENDPOINT_URL": self.runtime_endpoint_url,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": REGION,
        }
