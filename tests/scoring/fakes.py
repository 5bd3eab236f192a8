"""An in-process stand-in for an endpoint, for Airflow-free tests of the scoring core.

Integration tests use the local stack's real HTTP endpoint; these narrow tests use this to drive
the pipeline's error paths deterministically.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv

from airflow_provider_smrt.exceptions import ModelInputError, ModelServerError, ServiceError, ThrottlingError


def _number(value: object) -> float:
    """A CSV field as a number; text counts as 0 (the fake model only adds numbers)."""
    try:
        return float(value or 0)  # type: ignore[arg-type]
    except ValueError:
        return 0.0


@dataclass
class Result:
    body: bytes
    invoked_production_variant: str | None = "AllTraffic"


@dataclass
class FakeEndpoint:
    """Sums each CSV row; rows containing ``poison`` fail with a ModelError (container status ``poison_status``)."""

    poison: float | None = None
    poison_status: int = 400
    throttle_rate: float = 0.0
    error_5xx_rate: float = 0.0
    latency: float = 0.0
    drop_last_prediction: bool = False
    seed: int = 7
    requests: int = 0
    ok_requests: int = 0
    rows_ok: int = 0
    bodies_rows: Counter[int] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def __call__(self, body: bytes) -> Result:
        with self._lock:
            self.requests += 1
            roll = self._rng.random()
        if self.latency:
            time.sleep(self.latency)
        if roll < self.throttle_rate:
            raise ThrottlingError("throttled", code="ThrottlingException", http_status=400)
        if roll < self.throttle_rate + self.error_5xx_rate:
            raise ServiceError("unavailable", code="ServiceUnavailable", http_status=503)
        table = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(autogenerate_column_names=True),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
        matrix = [table.column(i).to_pylist() for i in range(table.num_columns)]
        sums = [sum(_number(v) for v in row) for row in zip(*matrix, strict=True)]
        if self.poison is not None and any(self.poison in row for row in zip(*matrix, strict=True)):
            cls = ModelInputError if self.poison_status < 500 else ModelServerError
            raise cls(
                "poison",
                code="ModelError",
                http_status=424,
                original_status_code=self.poison_status,
                original_message="bad row",
            )
        if self.drop_last_prediction:
            sums = sums[:-1]
        with self._lock:
            self.ok_requests += 1
            self.rows_ok += len(sums)
        return Result("\n".join(repr(s) for s in sums).encode() + b"\n")


def numeric_table(rows: int, cols: int = 3, *, start: int = 0) -> pa.Table:
    """Rows with an ``id`` and float features ``f0..`` whose sum is easy to check."""
    ids = list(range(start, start + rows))
    data = {"id": pa.array(ids, pa.int64())}
    for c in range(cols):
        data[f"f{c}"] = pa.array([float(i % 97) + c for i in ids], pa.float64())
    return pa.table(data)
