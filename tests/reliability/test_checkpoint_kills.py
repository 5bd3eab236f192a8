"""SIGKILL inside a unit, through Airflow (``dag.test()`` in a child process): checkpoints bound the lost work.

Two jobs, concurrency 4, each killed at 25 %, its rerun killed at 50 % and that one's rerun at 90 % of the
job's requests (counted at the endpoint, never timed), then run to completion:

- ``batch``: 12,000 rows in 2 files (one unit each), 200 rows a request (60 requests) at 100 ms a call,
  a checkpoint every 5 requests;
- ``template``: 600 rows, one row per request (a request template against the ``llm`` model) at 50 ms
  a call, the default checkpoint interval (64 requests or 10 s).

Each kill loses (sends again later) at most two checkpoint intervals (the segment being written and the
requests written since) plus the requests in flight, and the
last rerun sends exactly the rows no committed part and no checkpoint holds (what a LIST of the output
shows). The output is complete, every row exactly once, and no
checkpoint is left. Two more tests stall an S3 PUT (a checkpoint's, then a part's) in a proxy and kill the
run while it is in flight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pytest

from tests.support.child_runs import kill_when, requests_settled, start_child
from tests.support.connections import env
from tests.support.datasets import expected_sum, features
from tests.support.fault_proxy import FaultProxy
from tests.support.s3_objects import (
    checkpoint_segments,
    checkpointed_rows,
    data_parts,
    list_keys,
    put_parquet,
    read_output,
    read_table,
)
from tests.support.scoring_rig import ScoringRig

pytestmark = pytest.mark.slow

CONCURRENCY = 4
#: requests the workers may hold and the writer has not written (the pipeline's buffer slots): those at the
#: endpoint, and those encoded or decoded and waiting for their turn to be written in input order
IN_FLIGHT = 2 * CONCURRENCY + 2


@dataclass(frozen=True)
class Job:
    name: str
    files: int
    rows: int  # per file
    rows_per_request: int
    every: int  # checkpoint_every_requests
    latency_ms: int
    model: str
    op: dict[str, Any]

    @property
    def total_rows(self) -> int:
        return self.files * self.rows

    @property
    def total_requests(self) -> int:
        return self.total_rows // self.rows_per_request

    @property
    def lost_bound(self) -> int:
        """The requests a kill may lose: a segment being written (an interval), the requests written since (at
        most an interval: the writer waits for that segment before it takes the next) and those in flight."""
        return 2 * self.every + IN_FLIGHT


BATCH = Job(
    name="batch",
    files=2,
    rows=6_000,
    rows_per_request=200,
    every=5,
    latency_ms=100,
    model="sum",
    op={"max_rows_per_request": 200, "checkpoint_every_requests": 5},
)
TEMPLATE = Job(
    name="template",
    files=1,
    rows=600,
    rows_per_request=1,
    every=64,
    latency_ms=50,
    model="llm",
    op={
        "max_rows_per_request": None,
        "request_template": {"inputs": "{f0} {f1} {f2}", "parameters": {"max_new_tokens": 2}},
        "response_field": "generated_text",
    },
)


def _setup(rig: ScoringRig, job: Job) -> tuple[str, dict[str, Any], pa.Table]:
    tables = []
    for k in range(job.files):
        table = features(range(k * 100_000, k * 100_000 + job.rows))
        put_parquet(rig.s3, f"{rig.input_uri}f{k:03d}.parquet", table)
        tables.append(table)
    endpoint = rig.make_endpoint(job.model, faults={"latency_ms": job.latency_ms})
    content_type = "application/json" if job.model == "llm" else "text/csv"
    conf = rig.conf(endpoint, content_type=content_type, op={"concurrency": CONCURRENCY, **job.op})
    return endpoint, conf, pa.concat_tables(tables)


def _covered_rows(rig: ScoringRig) -> tuple[int, int]:
    """Rows of the committed parts and rows of the checkpoints under the output."""
    parts = sum(read_table(rig.s3, rig.output_uri + name).num_rows for name in data_parts(rig.s3, rig.output_uri))
    return parts, checkpointed_rows(rig.s3, rig.output_uri)


def _rerun_and_check(rig: ScoringRig, job: Job, endpoint: str, conf: dict[str, Any], data: pa.Table) -> dict[str, int]:
    """Rerun to completion; check what it sent against the output's listing and the output itself."""
    keys = list_keys(rig.s3, rig.output_uri)
    assert "_manifest.json" not in keys
    assert not [key for key in keys if key.startswith("part-") and ".parquet" not in key]
    first = requests_settled(rig, endpoint)
    in_parts, in_checkpoints = _covered_rows(rig)
    assert in_parts + in_checkpoints < job.total_rows
    run = rig.run(conf, "rerun")
    assert run.succeeded, run.error("score")
    after = rig.endpoint_stats(endpoint)
    resent_requests = after["requests"] - first["requests"]
    resent_rows = after["rows_ok"] - first["rows_ok"]
    unfinished = job.total_rows - in_parts - in_checkpoints
    assert resent_rows == unfinished, "rows a part or a checkpoint holds were sent again"
    assert resent_requests == unfinished // job.rows_per_request
    lost = first["requests"] + resent_requests - job.total_requests  # sent before the kills, and again
    out = read_output(rig.s3, rig.output_uri)
    ids = out["id"].to_pylist()
    assert len(ids) == len(set(ids)) == job.total_rows
    if job.model == "sum":
        assert dict(zip(ids, out["prediction"].to_pylist(), strict=True)) == pytest.approx(expected_sum(data))
    else:
        assert all(text and text.startswith("3 words: ") for text in out["prediction"].to_pylist())
    summary = run.xcom("score")
    assert summary["rows_scored"] == job.total_rows
    assert summary["rows_resumed_from_checkpoints"] == in_checkpoints
    assert not [key for key in list_keys(rig.s3, rig.output_uri) if key.startswith("_checkpoints/")]
    return {
        "requests_total": job.total_requests,
        "requests_first_run": first["requests"],
        "rows_in_parts_at_kill": in_parts,
        "rows_in_checkpoints_at_kill": in_checkpoints,
        "requests_resent": resent_requests,
        "requests_lost_in_all": lost,
        "requests_lost_bound": job.lost_bound,
        "checkpoints_written_by_rerun": summary["checkpoints_written"],
    }


@pytest.mark.parametrize("job", [BATCH, TEMPLATE], ids=lambda job: job.name)
def test_sigkill_inside_a_unit_loses_at_most_one_interval(job: Job, rig: ScoringRig) -> None:
    """Killed at 25 %, its rerun at 50 % and that one's rerun at 90 % of the requests: each kill loses at most
    two intervals and the requests in flight (requests sent, less those whose rows a part or a checkpoint holds)."""
    endpoint, conf, data = _setup(rig, job)
    wasted = 0
    losses = []
    for percent in (25, 50, 90):
        proc = start_child(conf, rig.tmp_path / f"killed-at-{percent}")
        target = job.total_requests * percent // 100
        kill_when(proc, lambda target=target: rig.endpoint_stats(endpoint)["requests"] >= target)  # type: ignore[misc]
        sent = requests_settled(rig, endpoint)["requests"]
        in_parts, in_checkpoints = _covered_rows(rig)
        now_wasted = sent - (in_parts + in_checkpoints) // job.rows_per_request
        losses.append(now_wasted - wasted)
        wasted = now_wasted
        assert 0 <= losses[-1] <= job.lost_bound, f"the kill at {percent} % lost {losses[-1]} requests"
    numbers = _rerun_and_check(rig, job, endpoint, conf, data)
    rig.figures.record(f"checkpoint_sigkill_{job.name}_25_50_90pct", requests_lost_per_kill=losses, **numbers)


@pytest.mark.parametrize(
    ("what", "pattern"),
    [("checkpoint", r"/out/_checkpoints/part-[^/]+/seg-"), ("part", r"/out/part-[^/]+\.parquet$")],
)
def test_sigkill_while_an_s3_put_is_in_flight(what: str, pattern: str, rig: ScoringRig) -> None:
    """A proxy holds the first PUT of a checkpoint segment (or of a data part); the run is killed meanwhile.

    The held object never appears; the rerun (through the proxy, which counts its S3 requests) resumes from
    what the listing shows. It merges the checkpoints it resumes with one GET each, writes one PUT per
    checkpoint and deletes a committed unit's checkpoints with one DeleteObjects.
    """
    job = BATCH
    endpoint, conf, data = _setup(rig, job)
    conf["aws_conn_id"] = "r_s3_stall"
    with FaultProxy(rig.stack.s3_endpoint_url) as proxy, env(**rig.connection("r_s3_stall", s3=proxy.url)):
        proxy.state.stall_write_matching = re.compile(pattern)
        proc = start_child(conf, rig.tmp_path / "first")
        kill_when(proc, proxy.state.stalled.is_set)
        proxy.state.release.set()  # the held PUT is dropped, never forwarded
        held = proxy.state.stalled_path or ""
        assert not [key for key in list_keys(rig.s3, rig.output_uri) if held.endswith("/" + key)]
        if what == "part":
            assert checkpoint_segments(rig.s3, rig.output_uri), "the unit's checkpoints were left for the rerun"
        resumed = len(checkpoint_segments(rig.s3, rig.output_uri))
        with proxy.state.lock:
            proxy.state.records.clear()
        numbers = _rerun_and_check(rig, job, endpoint, conf, data)
        assert numbers["requests_lost_in_all"] <= job.lost_bound
        records = list(proxy.state.records)
    checkpoint_puts = [r for r in records if r.method == "PUT" and "/_checkpoints/" in r.path]
    checkpoint_gets = [r for r in records if r.method == "GET" and "/_checkpoints/" in r.path]
    deletes = [r for r in records if r.method == "POST" and "delete" in r.query]
    assert len(checkpoint_puts) == numbers["checkpoints_written_by_rerun"]  # one PUT per checkpoint (no errors)
    assert len(checkpoint_gets) == resumed  # one GET per resumed segment
    rig.figures.record(
        f"checkpoint_sigkill_during_{what}_put",
        s3_puts_per_checkpoint=len(checkpoint_puts) / max(numbers["checkpoints_written_by_rerun"], 1),
        s3_gets_per_resumed_segment=len(checkpoint_gets) / max(resumed, 1),
        s3_delete_objects_calls=len(deletes),
        **numbers,
    )
