"""Assets: the scoring operator's outlet records an asset event (with counts), and the consumer is scheduled on it."""

from __future__ import annotations

from typing import Any

from tests.support.dag_runs import example_module, get_dag, run_dag
from tests.support.s3_objects import delete_prefix, read_parts


def _asset_events(uri: str) -> list[Any]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == uri)
        )
        rows = events.all()
        for row in rows:
            session.expunge(row)
        return rows


def test_scoring_dag_records_the_predictions_asset_event(s3_client: Any) -> None:
    module = example_module("example_assets")
    features, predictions = module.FEATURES, module.PREDICTIONS
    for asset in (features, predictions):
        delete_prefix(s3_client, asset.uri.rstrip("/") + "/")

    landed = run_dag("smrt_example_assets_features")
    assert landed.state == "success", landed.states
    assert any(e.source_run_id == landed.run_id for e in _asset_events(features.uri))

    run = run_dag("smrt_example_assets_score")
    assert run.state == "success", run.states
    events = [e for e in _asset_events(predictions.uri) if e.source_run_id == run.run_id]
    assert len(events) == 1
    event = events[0]
    assert event.source_dag_id == "smrt_example_assets_score" and event.source_task_id == "score"
    assert event.extra["rows_scored"] == 2_000 and event.extra["rows_failed"] == 0
    assert event.extra["output_uri"] == predictions.uri
    assert read_parts(s3_client, predictions.uri.rstrip("/") + "/").num_rows == 2_000


def test_scheduling_references_the_assets() -> None:
    module = example_module("example_assets")
    score = get_dag("smrt_example_assets_score")
    notify = get_dag("smrt_example_assets_notify")
    assert module.FEATURES in _assets_of(score)
    assert module.PREDICTIONS in _assets_of(notify)
    assert module.PREDICTIONS in score.get_task("score").outlets


def _assets_of(dag: Any) -> list[Any]:
    """The assets a DAG is scheduled on (``schedule=[asset, ...]`` is an AssetAll condition)."""
    return list(dag.timetable.asset_condition.objects)
