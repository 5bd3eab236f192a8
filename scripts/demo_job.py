"""Run the example scoring DAG on an already running local stack, twice, and print a summary.

Called by ``scripts/demo`` inside ``smrt-local run``, which provides ``AIRFLOW_CONN_AWS_DEFAULT`` and
``SMRT_S3_ENDPOINT_URL``. The second run of the same date shows the resume: it finds every part
committed and sends no request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "smrt_example_batch_score"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--date", default="2026-01-01", help="logical date of the DAG run")
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the demo dataset")
    args = parser.parse_args()

    s3_url = os.environ["SMRT_S3_ENDPOINT_URL"]
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(ROOT / ".smrt" / "airflow-demo"))
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "example_dags")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    bin_dir = Path(sys.executable).parent

    partition = f"s3://smrt-local/demo/diabetes/ds={args.date}/"
    print(f"seeding {args.rows:,} demo rows into {partition}", flush=True)
    subprocess.run(
        [str(bin_dir / "smrt-local"), "seed-demo", "--s3-endpoint-url", s3_url,
         "--uri", partition, "--rows", str(args.rows), "--files", "4"],
        check=True,
    )
    subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], check=True, env=env, stdout=subprocess.DEVNULL)
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    prefix = f"predictions/diabetes/ds={args.date}/"
    runs = []
    for attempt in ("first run", "second run of the same date (resumes)"):
        print(f"running DAG {DAG_ID} for {args.date} through Airflow: {attempt}", flush=True)
        run = subprocess.run([str(bin_dir / "airflow"), "dags", "test", DAG_ID, args.date], env=env)
        if run.returncode != 0:
            print(f"the DAG run failed (exit {run.returncode}); see the task log above", file=sys.stderr)
            return run.returncode
        manifest = json.loads(s3.get_object(Bucket="smrt-local", Key=prefix + "_manifest.json")["Body"].read())
        runs.append(manifest["totals"])
    totals, again = runs
    print()
    print("=== summary ===")
    print(f"endpoint       : {manifest['endpoint_name']}")
    print(f"input files    : {len(manifest['inputs'])}")
    print(f"rows in        : {totals['rows_in']:,}")
    print(f"rows scored    : {totals['rows_scored']:,}")
    print(f"rows failed    : {totals['rows_failed']:,}")
    print(f"requests       : {totals['requests']:,}")
    print(f"output         : s3://smrt-local/{prefix} ({len(manifest['parts'])} parts + _manifest.json)")
    print(f"second run     : {again['requests']:,} requests (every part was already committed)")
    return 0 if totals["rows_scored"] == totals["rows_in"] and again["requests"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
