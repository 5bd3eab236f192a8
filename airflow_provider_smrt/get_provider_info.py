"""Provider metadata for Airflow's ``apache_airflow_provider`` entry point. Imports nothing heavy."""

from __future__ import annotations

from typing import Any

from airflow_provider_smrt import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-smrt",
        "name": "SageMaker Runtime batch scoring",
        "description": "Batch scoring of Parquet datasets against Amazon SageMaker endpoints.",
        "versions": [__version__],
        "hooks": [
            {
                "integration-name": "Amazon SageMaker Runtime",
                "python-modules": [
                    "airflow_provider_smrt.hooks.sagemaker_runtime",
                    "airflow_provider_smrt.hooks.s3",
                    "airflow_provider_smrt.hooks.transport",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": "Amazon SageMaker Runtime",
                "python-modules": [
                    "airflow_provider_smrt.operators.batch_score",
                    "airflow_provider_smrt.operators.invoke_endpoint_async",
                    "airflow_provider_smrt.operators.async_batch_score",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Amazon SageMaker Runtime",
                "python-modules": ["airflow_provider_smrt.sensors.async_inference"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Amazon SageMaker Runtime",
                "python-modules": ["airflow_provider_smrt.triggers.async_inference"],
            }
        ],
        "extra-links": [
            "airflow_provider_smrt.links.SageMakerEndpointLink",
            "airflow_provider_smrt.links.SageMakerModelLogsLink",
        ],
        "integrations": [
            {
                "integration-name": "Amazon SageMaker Runtime",
                "external-doc-url": "https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_Operations_Amazon_SageMaker_Runtime.html",
                "tags": ["aws"],
            }
        ],
    }
