"""Micro-benchmark of the scoring codecs and the request planner.

Measures µs per row for encoding a 500-row x 20-float batch with each built-in codec, decoding a
response of one float output per row in each format, and the planner's overhead (planning the same
rows into requests, against encoding them directly). Prints a small table.

Run: ``python bench/bench_codecs.py [--rows 500] [--cols 20] [--repeat 7]``
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from airflow_provider_smrt.scoring.batching import RequestPlanner
from airflow_provider_smrt.scoring.codecs import CSV, JSON, JSONLINES, get_codec


def per_row_us(fn: Callable[[], object], *, rows: int, repeat: int, min_seconds: float = 0.2) -> float:
    """Best-of-``repeat`` CPU µs per row (process CPU time, all threads: robust to other load on the machine).

    Each sample loops ``fn`` for at least ``min_seconds`` of CPU time.
    """
    fn()  # warm up
    samples = []
    for _ in range(repeat):
        loops = 0
        start = time.process_time()
        while True:
            fn()
            loops += 1
            elapsed = time.process_time() - start
            if elapsed >= min_seconds:
                break
        samples.append(elapsed / loops / rows * 1e6)
    return min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--cols", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rows, cols, repeat = args.rows, args.cols, args.repeat

    rng = np.random.default_rng(42)
    table = pa.table({f"f{j}": rng.normal(size=rows) for j in range(cols)})
    predictions = rng.random(rows)

    results: list[tuple[str, str, float, str]] = []

    for content_type in (CSV, JSONLINES, JSON):
        codec = get_codec(content_type=content_type)
        body = codec.encode(table)
        us = per_row_us(partial(codec.encode, table), rows=rows, repeat=repeat)
        results.append(("encode", content_type, us, f"{len(body) / rows:.0f} B/row"))
    # The CSV encoder against Arrow's CSV writer on the same table (what the boto3 loop uses, and what the
    # encoder itself uses for mixed schemas), alternated, the median of the paired ratios.
    csv_codec = get_codec(content_type=CSV)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")

    def arrow_csv() -> bytes:
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, options)
        return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]

    read_back = np.loadtxt(io.BytesIO(csv_codec.encode(table)), delimiter=",", ndmin=2)
    assert np.array_equal(read_back, np.loadtxt(io.BytesIO(arrow_csv()), delimiter=",", ndmin=2))
    pairs = [
        (per_row_us(partial(csv_codec.encode, table), rows=rows, repeat=1), per_row_us(arrow_csv, rows=rows, repeat=1))
        for _ in range(repeat)
    ]
    arrow_us = statistics.median(arrow for _, arrow in pairs)
    ratio = statistics.median(ours / arrow for ours, arrow in pairs)
    results.append(("encode", "csv via pyarrow.csv.write_csv", arrow_us, f"text/csv encoder / this: {ratio:.2f}"))
    codec = get_codec(content_type=JSONLINES, json_record_format="object")
    us = per_row_us(lambda: codec.encode(table), rows=rows, repeat=repeat)
    results.append(("encode", "jsonlines (object records)", us, "general path"))
    mixed = table.append_column("label", pa.array([f"c{i % 7}" for i in range(rows)]))
    codec = get_codec(content_type=JSON)
    us = per_row_us(lambda: codec.encode(mixed), rows=rows, repeat=repeat)
    results.append(("encode", "json (20 floats + 1 string)", us, "general path"))
    quoted = table.append_column("label", pa.array([f"a,{i}" for i in range(rows)]))
    codec = get_codec(content_type=CSV)
    us = per_row_us(lambda: codec.encode(quoted), rows=rows, repeat=repeat)
    results.append(("encode", "csv (20 floats + 1 quoted string)", us, "quoting path"))

    bodies = {
        CSV: "".join(f"{v!r}\n" for v in predictions.tolist()).encode(),
        JSONLINES: b"".join(orjson.dumps(v) + b"\n" for v in predictions.tolist()),
        JSON: orjson.dumps({"predictions": predictions.tolist()}),
    }
    for content_type, response in bodies.items():
        codec = get_codec(content_type=content_type)
        out = codec.decode(response, num_rows=rows, content_type=content_type)
        assert out.num_rows == rows and out.schema.types == [pa.float64()]
        decode = partial(codec.decode, response, num_rows=rows, content_type=content_type)
        us = per_row_us(decode, rows=rows, repeat=repeat)
        results.append(("decode", f"{content_type} (1 float)", us, f"{len(response) / rows:.0f} B/row"))

    # Planner overhead: the same rows planned into requests of `rows` rows each (the payload limit
    # not binding), against encoding them directly. The planner's estimate is warm after the first call.
    big = pa.concat_tables([table] * 20)
    codec = get_codec(content_type=CSV)
    planner = RequestPlanner(codec=codec, max_rows_per_request=rows)

    def direct_encode() -> object:
        return [codec.encode(big.slice(o, rows)) for o in range(0, big.num_rows, rows)]

    # Alternate the samples so that drift in machine load affects both sides alike.
    direct = planned = float("inf")
    for _ in range(repeat):
        direct = min(direct, per_row_us(direct_encode, rows=big.num_rows, repeat=1))
        planned = min(planned, per_row_us(lambda: list(planner.split(big)), rows=big.num_rows, repeat=1))
    results.append(("plan", "csv, row-limited (500/request)", planned, f"direct encode {direct:.3f}"))
    results.append(("plan", "  overhead vs direct encode", planned - direct, f"{(planned / direct - 1) * 100:+.1f}%"))

    # Payload-limited: 100 kB requests, so the planner sizes slices from its estimate.
    planner = RequestPlanner(codec=codec, max_payload_bytes=100_000)
    planned = per_row_us(lambda: list(planner.split(big)), rows=big.num_rows, repeat=repeat)
    stats = planner.stats
    results.append(
        (
            "plan",
            "csv, payload-limited (100 kB)",
            planned,
            f"{stats.requests} requests, {stats.re_encodes} re-encodes, waste {stats.waste_ratio:.3%}",
        )
    )

    print(f"{rows} rows x {cols} float64 features; CPU time, best of {repeat} samples\n")
    print(f"{'op':<7} {'case':<36} {'µs/row':>8}  notes")
    print(f"{'-' * 7} {'-' * 36} {'-' * 8}  {'-' * 30}")
    for op, case, us, note in results:
        print(f"{op:<7} {case:<36} {us:>8.3f}  {note}")
    print(f"\nmedian of encodes: {statistics.median(r[2] for r in results if r[0] == 'encode'):.3f} µs/row")


if __name__ == "__main__":
    main()
