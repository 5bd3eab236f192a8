"""Allocator settings that keep a scoring run's memory from growing with the input's size.

A run allocates and frees large, short-lived buffers from many threads: request bodies and the
Parquet input's read windows (Python ``bytes``, from glibc's ``malloc``), Arrow batches, row groups and
column chunks. glibc raises its mmap threshold to the size of the largest block freed so far (up to
32 MiB), so after the first large buffer every later one below that size comes from the per-thread
arenas, which fragment and rarely shrink: resident memory then grows with the run's length although
the live data does not (``docs/performance.md``, "Memory").

:func:`fix_mmap_threshold` pins that threshold at :data:`MMAP_THRESHOLD_BYTES`: a buffer that large is
mapped when allocated and unmapped when freed. Arrow's pool is the deployer's choice: the C++ default
pool (used by Parquet's reader and writer) and mimalloc's options are read from the environment when
pyarrow loads, so nothing a task does later changes them; ``ARROW_DEFAULT_MEMORY_POOL=system`` in the
workers' environment keeps a run's memory flat (``docs/performance.md``, "Memory"). Airflow-free.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import threading

import pyarrow as pa

__all__ = ["MMAP_THRESHOLD_BYTES", "arrow_pool_advice", "fix_mmap_threshold"]

log = logging.getLogger(__name__)

#: Blocks of at least this size are mapped and unmapped by glibc (its default, before it adapts: 128 KiB).
MMAP_THRESHOLD_BYTES = 256 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h

_lock = threading.Lock()
_done = False


def fix_mmap_threshold() -> None:
    """``mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)`` once per process, on glibc only.

    This also stops glibc from adapting the threshold (and its trim threshold). Elsewhere, a no-op.
    """
    global _done
    with _lock:
        if _done:
            return
        _done = True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        if not ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
            log.debug("glibc refused mallopt(M_MMAP_THRESHOLD)")
    except (OSError, AttributeError) as err:
        log.debug("cannot set glibc's mmap threshold: %s", err)


def arrow_pool_advice() -> str | None:
    """What to set for flat memory, when Arrow's default pool is not the system allocator; else ``None``."""
    backend = pa.default_memory_pool().backend_name
    if backend == "system":
        return None
    return (
        f"Arrow memory pool: {backend}; it keeps freed memory per thread, so peak memory grows with a long "
        "run: set ARROW_DEFAULT_MEMORY_POOL=system in the workers' environment to keep it flat "
        "(docs/performance.md, Memory)"
    )
