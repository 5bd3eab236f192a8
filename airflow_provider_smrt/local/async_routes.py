"""InvokeEndpointAsync on the local endpoint: the request's checks and its job for the async processor."""

from __future__ import annotations

import time
import uuid

import orjson

from airflow_provider_smrt.local import async_jobs
from airflow_provider_smrt.local.http_io import WireHandler
from airflow_provider_smrt.local.state import Endpoint
from airflow_provider_smrt.local.wire import ServiceError


class AsyncRoutes(WireHandler):
    """``POST /endpoints/{name}/async-invocations`` (a base of the endpoint's ``_Handler``)."""

    def _submit_async(self, endpoint: Endpoint, body: bytes) -> None:
        h = self.headers
        location = h.get("X-Amzn-SageMaker-InputLocation")
        if bool(location) == bool(body):
            raise ServiceError("ValidationError", "Exactly one of InputLocation and Body must be given.")
        ttl = _int_header(
            h.get("X-Amzn-SageMaker-RequestTTLSeconds"), async_jobs.DEFAULT_TTL_SECONDS, 60, 21_600, "RequestTTLSeconds"
        )
        timeout = _int_header(
            h.get("X-Amzn-SageMaker-InvocationTimeoutSeconds"),
            async_jobs.DEFAULT_TIMEOUT_SECONDS,
            1,
            3_600,
            "InvocationTimeoutSeconds",
        )
        inference_id = h.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4())
        extension = (h.get("X-Amzn-SageMaker-S3OutputPathExtension") or "").strip("/")
        prefix = f"{extension}/" if extension else ""
        filename = h.get("X-Amzn-SageMaker-Filename") or f"{inference_id}.out"
        job = async_jobs.AsyncJob(
            endpoint=endpoint,
            inference_id=inference_id,
            input_location=location or None,
            inline_body=body or None,
            content_type=h.get("X-Amzn-SageMaker-Content-Type"),
            accept=h.get("X-Amzn-SageMaker-Accept"),
            custom_attributes=h.get("X-Amzn-SageMaker-Custom-Attributes"),
            ttl_seconds=ttl,
            timeout_seconds=timeout,
            output_location=f"{endpoint.s3_output_path}/{prefix}{filename}",
            failure_location=f"{endpoint.s3_failure_path}/{prefix}{inference_id}-error.out",
            enqueued=time.monotonic(),
        )
        self.server.async_processor.submit(job)
        headers = {
            "Content-Type": "application/json",
            "X-Amzn-SageMaker-OutputLocation": job.output_location,
            "X-Amzn-SageMaker-FailureLocation": job.failure_location,
        }
        self._send(202, orjson.dumps({"InferenceId": inference_id}), headers)


def _int_header(value: str | None, default: int, low: int, high: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError as err:
        raise ServiceError("ValidationError", f"{name} must be an integer.") from err
    if not low <= number <= high:
        raise ServiceError("ValidationError", f"{name} must be between {low} and {high}.")
    return number
