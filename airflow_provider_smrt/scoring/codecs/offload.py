"""Request bodies encoded in child processes, so that the task's own process keeps its GIL for the calls.

Encoding a body is a third of the client CPU a request costs (``docs/performance.md``, Limits), and
in one process it holds the GIL that the calls, the decoding and the writer need too.
:class:`EncoderProcesses` runs the built-in CSV and JSON encoders in ``processes`` children
(this module, run by the task's interpreter): a worker thread sends the request's
rows as an Arrow IPC record batch down a pipe and waits, without the GIL, for the body.

Nothing else changes: the bodies are the encoder's, byte for byte. Whatever a child cannot do is
done in the task's process by the same encoder, so errors are the ones it raises there:

- the first body waits for a child to be ready (it imports pyarrow: ~0.2 s); if none is within
  :data:`START_TIMEOUT` seconds, bodies are encoded in the task's process;
- features of a type other than numbers, booleans and strings (dictionary, temporal, nested,
  extension types) are encoded in the task's process;
- a body the child fails to encode (bad input) is encoded again in the task's process, which raises
  the error it raises without a child;
- a child that exits is not replaced; with none left, every body is encoded in the task's process,
  and one warning says so.

The children read nothing but pipes and log nothing; their environment is the task's without
credentials (``AWS_*``, ``AIRFLOW_CONN_*``, ``AIRFLOW_VAR_*``, names with ``SECRET``, ``TOKEN``,
``PASSWORD``...), and their ``sys.path`` the task's. Each exits when its pipe closes, so a killed task
leaves none behind. Airflow-free.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from typing import IO, Any, Literal

import pyarrow as pa

from airflow_provider_smrt.exceptions import ParameterValidationError
from airflow_provider_smrt.scoring.codecs.arrow import is_string, schema_memo
from airflow_provider_smrt.scoring.codecs.base import EncoderFn

__all__ = ["EncodeProcesses", "EncoderProcesses", "offloadable", "resolve_encode_processes"]

log = logging.getLogger(__name__)

EncodeProcesses = int | Literal["auto"]

_FRAME = struct.Struct(">cQ")  # kind, payload length
#: Each pipe's buffer (the most Linux gives an unprivileged process by default): a ~200 KB body passes
#: in one write instead of four of the default 64 KiB.
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
#: Seconds the first body waits for a child to start before it is encoded in the task's process.
START_TIMEOUT = 60.0
_ENCODER, _SCHEMA, _BATCH = b"E", b"S", b"B"
_READY, _BODY, _FAILED = b"R", b"O", b"X"


def resolve_encode_processes(value: object) -> int:
    """``encode_processes`` as a number of children: ``"auto"`` is 1 with two CPUs or more to run on, else 0.

    :raises ParameterValidationError: ``value`` is neither ``"auto"`` nor an integer from 0 to 64.
    """
    if value == "auto":
        return 1 if _usable_cpus() >= 2 else 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise ParameterValidationError(
            f"encode_processes={value!r} must be 'auto' or an integer from 0 to 64: the child processes that encode "
            "request bodies (0: encode in the task's process)"
        )
    return value


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def offloadable(encoder: EncoderFn) -> bool:
    """Whether ``encoder`` can run in a child: the built-in CSV and JSON encoders (user code stays in the task)."""
    from airflow_provider_smrt.scoring.codecs.encoders import CsvEncoder, JsonEncoder

    return type(encoder) in (CsvEncoder, JsonEncoder)


@schema_memo
def _plain(schema: pa.Schema) -> bool:
    """Every field a number, a boolean or a string: types an IPC batch carries alone, read back the same."""
    return all(
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or is_string(t)
        for t in schema.types
    )


#: Environment variables the children do not get: credentials and connections (they need none).
_SECRET_PREFIXES = ("AWS_", "AIRFLOW_CONN_", "AIRFLOW_VAR_")
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "ACCESS_KEY", "PRIVATE_KEY")
#: How a child starts: this interpreter with the task's ``sys.path`` (argument 1, JSON), then this module.
_BOOTSTRAP = (
    "import json, runpy, sys; sys.path[:] = json.loads(sys.argv[1]); runpy.run_module(sys.argv[2], run_name='__main__')"
)


class ProtocolError(Exception):
    """A child answered with a frame out of turn (it is dropped)."""


def _child_environment() -> dict[str, str]:
    """The task's environment without credentials (``AWS_*``, ``AIRFLOW_CONN_*``, ``AIRFLOW_VAR_*``, secrets)."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(_SECRET_PREFIXES) and not any(word in name.upper() for word in _SECRET_WORDS)
    }


def _child_command() -> list[str]:
    """This interpreter, on the task's ``sys.path`` (dags folder, plugins, a source checkout: what the task imports)."""
    return [sys.executable, "-c", _BOOTSTRAP, json.dumps(sys.path), __name__]


class _Child:
    """One child process and its two pipes; used by one thread at a time (taken from the free queue)."""

    def __init__(self, encoder: EncoderFn) -> None:
        self.process = subprocess.Popen(
            _child_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_environment(),
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin: IO[bytes] = self.process.stdin
        self.stdout: IO[bytes] = self.process.stdout
        for pipe in (self.stdin, self.stdout):
            if _F_SETPIPE_SZ is not None:
                with contextlib.suppress(OSError):
                    fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
        self.schema: pa.Schema | None = None
        try:
            _send(self.stdin, _ENCODER, pickle.dumps(encoder))
        except OSError:
            self.kill()
            raise

    def wait_ready(self) -> bool:
        try:
            kind, _ = _receive(self.stdout)
        except (OSError, EOFError, ValueError):
            return False
        return kind == _READY

    def encode(self, batch: pa.RecordBatch) -> bytes | None:
        """The body of ``batch``, or None if the child's encoder raised; any exception: the child is unusable."""
        if self.schema is not batch.schema and (self.schema is None or not self.schema.equals(batch.schema)):
            self.schema = None  # until the child has it
            _send(self.stdin, _SCHEMA, batch.schema.serialize().to_pybytes())
            self.schema = batch.schema
        _send(self.stdin, _BATCH, batch.serialize().to_pybytes())
        kind, payload = _receive(self.stdout)
        if kind == _BODY:
            return payload
        if kind == _FAILED:
            return None
        raise ProtocolError(f"unexpected frame {kind!r} from the encoder process")

    def exit_code(self, timeout: float = 1.0) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=timeout)
        return None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        self.finish(timeout=None)

    def end_input(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stdin.close()

    def finish(self, timeout: float | None = 5.0) -> None:
        """Wait for the child's exit (its input closed), killing it after ``timeout`` seconds; close the pipes."""
        self.end_input()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError, ValueError):
            self.stdout.close()


class EncoderProcesses:
    """An encoder (``features -> body``) that runs ``encoder`` in ``processes`` children; see the module docstring.

    Thread-safe: each call takes a free child (waiting, without the GIL, while all are busy). Call
    :meth:`close` when the run is over; it is also a context manager.
    """

    def __init__(self, encoder: EncoderFn, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.encoder = encoder
        self._free: queue.SimpleQueue[_Child | None] = queue.SimpleQueue()
        self._children: list[_Child] = []
        self._live = 0
        self._started = 0
        self._gave_up = False
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        #: Bodies the children encoded, and those encoded in this process (not ready, other types, failures).
        self.offloaded = 0
        self.inline = 0
        for _ in range(processes):
            try:
                child = _Child(encoder)
            except OSError as err:
                log.warning("an encoder process could not start (%s); %s", type(err).__name__, _FALLBACK)
                continue
            self._children.append(child)
            self._live += 1
            threading.Thread(target=self._start, args=(child,), name="smrt-encode-start", daemon=True).start()
        if not self._children:
            self._encode_here_from_now()

    def __repr__(self) -> str:
        return f"EncoderProcesses({type(self.encoder).__name__}, processes={len(self._children)})"

    def __enter__(self) -> EncoderProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, child: _Child) -> None:
        if not child.wait_ready():
            self._lost(child)
            return
        with self._lock:
            if self._gave_up or self._closed:
                return
            self._started += 1
        self._ready.set()
        self._free.put(child)

    def _lost(self, child: _Child) -> None:
        """``child`` is gone or unusable: stop it; with none left, wake every waiter to encode in this process."""
        code = child.exit_code(timeout=0.5)  # a child that is dying says why; one out of step is stopped
        child.kill()
        with self._lock:
            self._live -= 1
            none_left = self._live == 0
        if not self._closed:
            log.warning(
                "an encoder process %s; %s",
                "was stopped: it answered out of step" if code is None else f"exited (code {code})",
                f"request bodies are encoded in the task's process from now on; {_FALLBACK}"
                if none_left
                else "the others go on",
            )
        if none_left:
            self._encode_here_from_now()

    def _give_up(self) -> None:
        """No child started in time: every body is encoded here (the children are stopped by :meth:`close`)."""
        with self._lock:
            if self._ready.is_set() or self._gave_up:
                return
            self._gave_up = True
        log.warning("no encoder process started within %.0f s; %s", START_TIMEOUT, _FALLBACK)
        self._encode_here_from_now()

    def _encode_here_from_now(self) -> None:
        """Wake every call waiting for a child: the None each takes from the free queue (and puts back) says
        to encode in this process."""
        self._ready.set()
        self._free.put(None)

    def wait_started(self, timeout: float = START_TIMEOUT) -> bool:
        """Wait until a child is ready, or none is left; True if one is ready."""
        self._ready.wait(timeout)
        with self._lock:
            return self._started > 0 and self._live > 0 and not (self._gave_up or self._closed)

    def __call__(self, features: pa.Table) -> bytes:
        if self._closed or features.num_rows == 0 or not _plain(features.schema):
            return self._here(features)
        if not self._ready.wait(START_TIMEOUT):
            self._give_up()
            return self._here(features)
        child = self._free.get()
        if child is None or self._closed:  # no child left, or the run is over
            self._free.put(child)
            return self._here(features)
        try:
            body = child.encode(features.combine_chunks().to_batches()[0])
        except Exception:  # noqa: BLE001 - gone, out of step or out of memory: drop it, encode here
            self._lost(child)
            return self._here(features)
        except BaseException:  # e.g. KeyboardInterrupt mid-exchange: its answer is unread, so it is unusable
            self._lost(child)
            raise
        self._free.put(child)
        if body is None:  # the child's encoder raised: raise the same error from here
            return self._here(features)
        with self._lock:
            self.offloaded += 1
        return body

    def _here(self, features: pa.Table) -> bytes:
        with self._lock:
            self.inline += 1
        return self.encoder(features)

    def close(self) -> None:
        """Stop the children (each exits when its pipe closes); bodies asked for later are encoded here."""
        with self._lock:
            self._closed = True
        self._encode_here_from_now()
        for child in self._children:
            child.end_input()
        for child in self._children:
            child.finish()


_FALLBACK = "a child's error, if any, is in this log; encode_processes=0 encodes in the task's process from the start"


def _send(pipe: IO[bytes], kind: bytes, payload: bytes) -> None:
    pipe.write(_FRAME.pack(kind, len(payload)))
    pipe.write(payload)
    pipe.flush()


def _receive(pipe: IO[bytes]) -> tuple[bytes, bytes]:
    header = pipe.read(_FRAME.size)
    if len(header) < _FRAME.size:
        raise EOFError("the encoder process closed its pipe")
    kind, size = _FRAME.unpack(header)
    payload = pipe.read(size) if size else b""
    if len(payload) < size:
        raise EOFError("the encoder process closed its pipe")
    return kind, payload


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The child's loop: the encoder first, then schemas and batches in, bodies out, until the pipe closes."""
    from airflow_provider_smrt.scoring.memory import fix_mmap_threshold

    fix_mmap_threshold()
    kind, payload = _receive(stdin)
    if kind != _ENCODER:
        raise SystemExit(f"expected the encoder frame, got {kind!r}")
    encoder: Any = pickle.loads(payload)
    _send(stdout, _READY, b"")
    schema: pa.Schema | None = None
    while True:
        try:
            kind, payload = _receive(stdin)
        except EOFError:
            return
        if kind == _SCHEMA:
            schema = pa.ipc.read_schema(pa.py_buffer(payload))
            continue
        if kind != _BATCH:  # out of step with the parent: answering could pair a body with the wrong rows
            raise SystemExit(f"unexpected frame {kind!r}")
        try:
            batch = pa.ipc.read_record_batch(pa.py_buffer(payload), schema)
            body = encoder(pa.Table.from_batches([batch]))
        except Exception:  # noqa: BLE001 - the parent encodes it again and raises the error itself
            _send(stdout, _FAILED, b"")
            continue
        _send(stdout, _BODY, body)


def _main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes the pipe
    # Nothing but frames on the parent's pipe: they go to a copy of fd 1, and fd 1 (C code, print) to stderr.
    frames = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, frames)


if __name__ == "__main__":
    _main()
