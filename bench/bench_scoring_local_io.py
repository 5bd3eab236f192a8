"""Section (a) of bench_scoring.py with local input and output: separates moto's S3 traffic from the client.

Same endpoint (latency 50 ms, capacity 16), data (16 files x 25,000 rows x 20 floats), 500 rows per
request and concurrency 16 as section (a), but the operator reads and writes a local directory, so
moto (which shares the stack's CPU with the endpoint server) is idle during the busy window, as it is
for the hand-written loop. Run: ``.venv/bin/python bench/bench_scoring_local_io.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_scoring as b
import pyarrow.parquet as pq
from _stack import LocalStackProcess, runtime_client

from tests.support import local_control

IDEAL = 16 * 500 / 0.05


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="smrt-bench-local-io-"))
    inputs = [str(p) for p in b.generate(directory=work / "in", files=16, rows_per_file=25_000, row_group=12_500)]
    with LocalStackProcess(cpus=b.STACK_CPU) as stack:
        url = stack.runtime_endpoint_url
        b.quiet_logs()
        endpoint = local_control.put_endpoint(url, model="sum", faults={"latency_ms": 50, "capacity": 16})
        print("| run | operator rows/s | vs ideal | hand-written loop rows/s | vs ideal | operator / loop | load |")
        print("|---|---|---|---|---|---|---|")
        for run in range(2):
            local_control.reset_stats(url, endpoint)
            b.run_operator(endpoint, inputs, str(work / f"out-{run}"), rows_per_request=500, concurrency=16)
            operator, _ = b.busy_rate(url, endpoint)
            local_control.reset_stats(url, endpoint)
            tables = [pq.read_table(path) for path in inputs]
            client = runtime_client(url, max_pool_connections=18)
            b.hand_loop(tables, client, endpoint, rows_per_request=500, concurrency=16)
            hand, _ = b.busy_rate(url, endpoint)
            print(
                f"| {run + 1} | {operator:,.0f} | {operator / IDEAL:.2f} | {hand:,.0f} | {hand / IDEAL:.2f} | "
                f"{operator / hand:.2f} | {b.load()} |"
            )


if __name__ == "__main__":
    main()
