"""A scoring run pins glibc's mmap threshold (large transient buffers are unmapped when freed) and says what
to set when Arrow's pool is not the system allocator."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh process: the threshold is process-wide and set once. The size field in front of a
# block glibc returns has bit 0x2 (IS_MMAPPED) set when the block was mapped on its own.
PROBE = r"""
import ctypes, json, logging, sys
from pathlib import Path

import pyarrow.parquet as pq

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def mapped(size):
    block = libc.malloc(size)
    flag = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & 2
    libc.free(block)
    return bool(flag)


libc.free(libc.malloc(8 << 20))  # freeing a mapped 8 MiB block raises glibc's adaptive threshold to 8 MiB
before = mapped(1 << 20)

from airflow_provider_smrt.scoring.job import ScoringConfig, ScoringJob
from airflow_provider_smrt.scoring.storage import Storage
from tests.scoring.fakes import FakeEndpoint, numeric_table

root = Path(sys.argv[1])
(root / "in").mkdir()
pq.write_table(numeric_table(300), root / "in" / "a.parquet")
config = ScoringConfig(
    endpoint_name="fake", input_uri=str(root / "in"), output_uri=str(root / "out"), passthrough_columns=["id"],
    max_rows_per_request=100, concurrency=2,
)
lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logger = logging.getLogger("probe")
logger.addHandler(handler)
logger.setLevel(logging.INFO)
summary = ScoringJob(config=config, invoke=FakeEndpoint(), storage=Storage(), logger=logger).run()
print(json.dumps({
    "before": before, "after": mapped(1 << 20), "small_after": mapped(64 << 10), "rows": summary["rows_scored"],
    "advice": [line for line in lines if "ARROW_DEFAULT_MEMORY_POOL" in line],
}))
"""


GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def probe(tmp_path: Path, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.skipif(not GLIBC, reason="the threshold is glibc's")
@pytest.mark.parametrize("pool", ["system", "mimalloc"])
def test_a_run_pins_the_mmap_threshold_and_names_the_pool_to_set(tmp_path: Path, pool: str) -> None:
    result = probe(tmp_path, ARROW_DEFAULT_MEMORY_POOL=pool)
    # Before the run a 1 MiB block comes from the arenas (the threshold adapted to 8 MiB); after it, 1 MiB
    # is mapped (and unmapped when freed) while 64 KiB blocks still come from the arenas.
    assert (result["before"], result["after"], result["small_after"], result["rows"]) == (False, True, False, 300)
    if pool == "system":
        assert result["advice"] == []
    else:
        (advice,) = result["advice"]
        assert advice.startswith("Arrow memory pool: mimalloc;") and "docs/performance.md" in advice
