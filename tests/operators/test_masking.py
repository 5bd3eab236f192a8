"""A templated CustomAttributes value is registered with Airflow's secrets masker once rendered."""

from __future__ import annotations

from airflow_provider_smrt.operators.batch_score import SageMakerBatchScoreOperator
from airflow_provider_smrt.operators.invoke_endpoint_async import SageMakerInvokeEndpointAsyncOperator
from tests.support.airflow_compat import redact


def test_rendered_custom_attributes_are_masked() -> None:
    sentinel, sentinel2 = "attr-SENTINEL-91c2", "async-SENTINEL-77d1"
    batch = SageMakerBatchScoreOperator(
        task_id="b",
        endpoint_name="e",
        input_uri="s3://b/in/",
        output_uri="s3://b/out/",
        custom_attributes="{{ params.attrs }}",
    )
    invoke = SageMakerInvokeEndpointAsyncOperator(
        task_id="a", endpoint_name="e", input_location="s3://b/k", custom_attributes="{{ params.attrs2 }}"
    )
    assert "body" not in invoke.template_fields  # an inline payload is never stored as a rendered field
    for operator, rendered in ((batch, sentinel), (invoke, sentinel2)):
        assert rendered in str(redact(f"header value {rendered}"))  # not masked before rendering
        operator.render_template_fields({"params": {"attrs": sentinel, "attrs2": sentinel2}})
        assert operator.custom_attributes == rendered
        assert rendered not in str(redact(f"header value {rendered}"))
