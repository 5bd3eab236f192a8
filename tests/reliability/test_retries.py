"""Task retries through Airflow (a DAG with ``retries=2``): a failure a retry cannot fix fails after one try.

The package's errors answer ``.retryable``; the operators turn a non-retryable one into Airflow's
``AirflowFailException`` (so the task fails for good, the cause kept) and leave transient ones to Airflow.
"""

from __future__ import annotations

import pytest

from tests.support.datasets import put_files
from tests.support.scoring_rig import ScoringRig

DAG_ID = "r_score_retries"


def _tries(rig: ScoringRig, conf: dict[str, object], name: str) -> tuple[int, str]:
    run = rig.run(conf, name, dag_id=DAG_ID)
    assert run.state == "failed", run.states
    return run.task_instance("score").try_number, run.error("score")


def test_missing_endpoint_fails_after_one_try(rig: ScoringRig) -> None:
    put_files(rig.s3, rig.input_uri, files=1, rows=20)
    tries, error = _tries(rig, rig.conf("smrt-no-such-endpoint"), "missing")
    assert tries == 1
    assert "ConfigurationError" in error or "not retried" in error, error


def test_input_data_error_fails_after_one_try(rig: ScoringRig) -> None:
    endpoint = rig.make_endpoint("sum")
    tries, error = _tries(rig, rig.conf(endpoint, input_uri=rig.prefix + "nothing-here/"), "no_input")
    assert tries == 1
    assert "InputDataError" in error, error
    assert rig.endpoint_stats(endpoint)["requests"] == 0


def test_exceeded_error_budget_fails_after_one_try(rig: ScoringRig) -> None:
    endpoint = rig.make_endpoint("sum", faults={"poison_value": -999})
    put_files(rig.s3, rig.input_uri, files=1, rows=100, poison={3})
    tries, error = _tries(rig, rig.conf(endpoint), "budget")
    assert tries == 1
    assert "ErrorRatioExceededError" in error, error
    first_try = rig.endpoint_stats(endpoint)["model_errors"]
    assert first_try >= 1


@pytest.mark.slow
def test_transient_failure_is_retried(rig: ScoringRig) -> None:
    """5xx on every request: after its attempts the task fails retryably, and Airflow tries it 3 times."""
    endpoint = rig.make_endpoint("sum", faults={"error_5xx_rate": 1.0})
    put_files(rig.s3, rig.input_uri, files=1, rows=20)
    tries, error = _tries(rig, rig.conf(endpoint, op={"max_attempts": 2}), "transient")
    assert tries == 3, error
    assert "not retried" not in error


def test_logs_link_on_a_rerun_that_fails_on_model_errors(rig: ScoringRig) -> None:
    """The rerun resumes the parts (its rows are in _errors/) and fails without a request of its own: the
    model-logs link still points at the endpoint's log group."""
    from airflow_provider_smrt.links import SageMakerModelLogsLink

    endpoint = rig.make_endpoint("llm")  # rejects text/csv: every request is a ModelError
    put_files(rig.s3, rig.input_uri, files=1, rows=10)
    for name in ("first", "rerun"):
        run = rig.run(rig.conf(endpoint), name)
        assert run.state == "failed", run.states
        persisted = run.xcom("score", key=SageMakerModelLogsLink.key)
        assert persisted["log_group"] == f"/aws/sagemaker/Endpoints/{endpoint}", (name, persisted)
    assert "/log-group/%2Faws%2Fsagemaker%2FEndpoints%2F" in run.xcom("score", key=SageMakerModelLogsLink().xcom_key)
