"""Record the AWS operations botocore clients make, and the IAM action each one needs (docs/iam/ policies)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

#: The IAM action each client operation needs (what the policies under docs/iam/ must allow).
IAM_ACTIONS = {
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "GetObject"): "s3:GetObject",
    ("s3", "PutObject"): "s3:PutObject",
    ("s3", "CreateMultipartUpload"): "s3:PutObject",
    ("s3", "UploadPart"): "s3:PutObject",
    ("s3", "CompleteMultipartUpload"): "s3:PutObject",
    ("s3", "AbortMultipartUpload"): "s3:AbortMultipartUpload",
    ("s3", "DeleteObjects"): "s3:DeleteObject",
    ("s3", "DeleteObject"): "s3:DeleteObject",
    ("sagemaker-runtime", "InvokeEndpoint"): "sagemaker:InvokeEndpoint",
    ("sagemaker-runtime", "InvokeEndpointAsync"): "sagemaker:InvokeEndpointAsync",
    ("sagemaker-runtime", "InvokeEndpointWithResponseStream"): "sagemaker:InvokeEndpointWithResponseStream",
    ("sts", "AssumeRole"): "sts:AssumeRole",
}


@dataclass
class CallRecorder:
    """Every AWS operation made by botocore clients created while installed (botocore ``before-call`` hook),
    and the S3 parameters of each call (``before-parameter-build.s3``)."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    s3_params: list[tuple[str, dict[str, Any], set[str]]] = field(default_factory=list)

    def on_call(self, model: Any, **_: Any) -> None:
        self.calls.append((model.service_model.service_name, model.name))

    def on_s3_params(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        members = set(model.input_shape.members) if model.input_shape is not None else set()
        self.s3_params.append((model.name, dict(params), members))

    def actions(self, services: tuple[str, ...] = ("s3", "sagemaker-runtime")) -> set[str]:
        unknown = {call for call in self.calls if call[0] in services and call not in IAM_ACTIONS}
        assert not unknown, f"operations without an IAM mapping: {unknown}"
        return {IAM_ACTIONS[call] for call in self.calls if call[0] in services}


@contextmanager
def record_aws_calls() -> Iterator[CallRecorder]:
    """Register the recorder's hooks on every botocore (and aiobotocore) client created inside the block."""
    from botocore.client import BaseClient

    recorder = CallRecorder()
    original = BaseClient.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.meta.events.register("before-call", recorder.on_call)
        self.meta.events.register("before-parameter-build.s3", recorder.on_s3_params)

    # The hook's lean transport sends InvokeEndpoint(Async) without the client's events: record its sends too.
    from airflow_provider_smrt.hooks.transport import LeanTransport

    original_send = LeanTransport.send

    def send(self: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
        model = call.operation_model
        recorder.calls.append((model.service_model.service_name, model.name))
        return original_send(self, call, *args, **kwargs)

    BaseClient.__init__ = init  # type: ignore[method-assign]
    LeanTransport.send = send  # type: ignore[method-assign]
    try:
        yield recorder
    finally:
        BaseClient.__init__ = original  # type: ignore[method-assign]
        LeanTransport.send = original_send  # type: ignore[method-assign]
