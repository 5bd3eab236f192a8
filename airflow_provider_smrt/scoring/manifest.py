"""A scoring run's summary (the operator's XCom) and its manifest document (``_manifest.json``)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

from airflow_provider_smrt import __version__
from airflow_provider_smrt.s3 import join_uri
from airflow_provider_smrt.scoring.compare import CompareStats
from airflow_provider_smrt.scoring.config import ScoringConfig
from airflow_provider_smrt.scoring.plan import ScoringPlan
from airflow_provider_smrt.scoring.sink import ERRORS_DIR
from airflow_provider_smrt.scoring.stats import RunStats
from airflow_provider_smrt.scoring.storage import Storage

__all__ = ["CALL_KEYS", "MANIFEST_FORMAT", "build_manifest", "build_summary", "estimate_cost_usd", "write_manifest"]

MANIFEST_FORMAT = "airflow-provider-smrt/manifest/1"


#: The summary's keys about HTTP calls and their cost, copied into the manifest's ``calls``.
CALL_KEYS = (
    "http_calls",
    "bytes_sent",
    "bytes_received",
    "endpoint_seconds",
    "latency_p50_ms",
    "latency_p95_ms",
    "busy_wall_seconds",
    "calls_by_variant",
    "instance_hourly_usd",
    "instance_count",
    "estimated_cost_usd",
)


def estimate_cost_usd(config: ScoringConfig, stats: RunStats) -> float | None:
    """``busy_wall_seconds / 3600 * instance_count * instance_hourly_usd``; None without a price.

    A real-time endpoint is billed per instance-hour whether busy or idle, so the run costs the
    instances for the time it keeps them busy: from its first call's start to its last call's end.
    """
    if config.instance_hourly_usd is None:
        return None
    return round(stats.busy_wall_seconds / 3600.0 * config.instance_count * config.instance_hourly_usd, 6)


def build_summary(
    config: ScoringConfig, plan: ScoringPlan, stats: RunStats, *, elapsed: float, compare: CompareStats | None = None
) -> dict[str, Any]:
    """The JSON-serialisable summary of a run that took ``elapsed`` seconds.

    With ``compare_targets`` (``compare``), ``compare_targets`` holds per target its rows scored and
    failed, its HTTP calls' latency p50/p95 (this run's calls) and its agreement with the first target.
    """
    summary = {
        "endpoint_name": config.endpoint_name,
        "output_uri": config.output_uri,
        "manifest_uri": join_uri(config.output_uri, config.manifest_name),
        "errors_uri": join_uri(config.output_uri, ERRORS_DIR) + "/",
        "input_files": len(plan.files),
        "rows_in": stats.rows_total,
        "rows_scored": stats.rows_scored,
        "rows_failed": stats.rows_failed,
        "units_total": len(plan.units),
        "units_skipped": len(plan.done),
        "parts_written": stats.parts_written,
        "checkpoints_written": stats.checkpoints_written,
        "rows_resumed_from_checkpoints": stats.rows_resumed_from_checkpoints,
        "requests": stats.requests,
        "retries": stats.retries,
        "throttles": stats.throttles,
        "bisections": stats.bisections,
        "rows_async": stats.rows_async,
        "bodies_encoded_by_children": stats.bodies_offloaded,
        "elapsed_seconds": round(elapsed, 3),
        "rows_per_second": round((stats.rows_scored + stats.rows_failed - plan.resumed_rows) / elapsed, 1)
        if elapsed > 0
        else 0.0,
        "invoked_variants": dict(stats.variants),
        "config_hash": plan.config_hash,
        **stats.calls.summary(),
        "busy_wall_seconds": round(stats.busy_wall_seconds, 6),
        "calls_by_variant": {name: calls.summary() for name, calls in sorted(stats.calls_by_variant.items())},
        "instance_hourly_usd": config.instance_hourly_usd,
        "instance_count": config.instance_count,
        "estimated_cost_usd": estimate_cost_usd(config, stats),
    }
    if compare is not None:
        with stats.lock:
            calls = {name: value.summary() for name, value in stats.calls_by_target.items()}
        summary["compare_targets"] = compare.summary(rows_in=stats.rows_total, calls=calls)
    return summary


def build_manifest(
    config: ScoringConfig, plan: ScoringPlan, stats: RunStats, summary: dict[str, Any]
) -> dict[str, Any]:
    """The manifest document: inputs (with versions), every unit's part and row counts, totals."""
    parts = []
    for unit in plan.units:
        name = plan.names[unit]
        scored, failed = stats.part_rows.get(name, (0, 0))
        parts.append(
            {
                "name": name,
                "input": unit.file.uri,
                "input_rows": [unit.start, unit.end],
                "rows_scored": scored,
                "rows_failed": failed,
                "errors": join_uri(ERRORS_DIR, name) if failed else None,
            }
        )
    return {
        "format": MANIFEST_FORMAT,
        "producer": f"airflow-provider-smrt {__version__}",
        "written_at": datetime.now(timezone.utc).isoformat(),
        "endpoint_name": config.endpoint_name,
        "content_type": config.content_type,
        "accept": config.accept or config.content_type,
        "feature_columns": plan.features,
        "passthrough_columns": plan.passthrough,
        "inputs": [
            {
                "uri": file.uri,
                "etag": file.info.etag,
                "version_id": file.info.version_id,
                "size": file.info.size,
                "rows": file.num_rows,
                **({"row_groups": list(file.row_groups)} if file.row_groups is not None else {}),
            }
            for file in plan.files
        ],
        "parts": parts,
        "totals": {key: summary[key] for key in ("rows_in", "rows_scored", "rows_failed", "requests")},
        "invoked_variants": summary["invoked_variants"],
        "calls": {key: summary[key] for key in CALL_KEYS},
        "config_hash": plan.config_hash,
        **({"compare_targets": summary["compare_targets"]} if "compare_targets" in summary else {}),
    }


def write_manifest(storage: Storage, uri: str, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically (one object)."""
    storage.write_bytes(uri, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
