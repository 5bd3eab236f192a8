"""A scoring run's summary (the operator's XCom) and its manifest document (``_manifest.json``)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

from airflow_provider_smrt import __version__
from airflow_provider_smrt.s3 import join_uri
from airflow_provider_smrt.scoring.config import ScoringConfig
from airflow_provider_smrt.scoring.plan import ScoringPlan
from airflow_provider_smrt.scoring.sink import ERRORS_DIR
from airflow_provider_smrt.scoring.stats import RunStats
from airflow_provider_smrt.scoring.storage import Storage

__all__ = ["MANIFEST_FORMAT", "build_manifest", "build_summary", "write_manifest"]

MANIFEST_FORMAT = "airflow-provider-smrt/manifest/1"


def build_summary(config: ScoringConfig, plan: ScoringPlan, stats: RunStats, *, elapsed: float) -> dict[str, Any]:
    """The JSON-serialisable summary of a run that took ``elapsed`` seconds."""
    return {
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
        "requests": stats.requests,
        "retries": stats.retries,
        "throttles": stats.throttles,
        "bisections": stats.bisections,
        "rows_async": stats.rows_async,
        "elapsed_seconds": round(elapsed, 3),
        "rows_per_second": round((stats.rows_scored + stats.rows_failed - plan.resumed_rows) / elapsed, 1)
        if elapsed > 0
        else 0.0,
        "invoked_variants": dict(stats.variants),
        "config_hash": plan.config_hash,
    }


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
        "config_hash": plan.config_hash,
    }


def write_manifest(storage: Storage, uri: str, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically (one object)."""
    storage.write_bytes(uri, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
