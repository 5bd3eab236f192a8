"""moto's S3 server, run as a child process on a loopback port (we never emulate S3 ourselves)."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In a child (``preexec_fn``): get SIGKILL when the parent dies, so a killed parent leaves no orphan (Linux).

    SIGKILL, not SIGTERM: moto's server holds nothing worth flushing, and under load it was seen to outlive
    a SIGTERM for more than 15 s.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class MotoS3Server:
    """``python -m moto.server`` in a child process.

    :param host: the address to bind.
    :param port: the port; 0 picks a free one.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the server."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the child and wait until it answers HTTP."""
        self.launch()
        self.wait_ready(timeout=timeout)

    def launch(self) -> None:
        """Start the child without waiting (see :meth:`wait_ready`)."""
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        """Wait until the child answers HTTP; stop it and raise if it does not within ``timeout``."""
        if self._process is None:
            raise RuntimeError("the S3 server was not launched")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto's S3 server exited at start with code {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto's S3 server did not answer on {self.url} within {timeout:.0f} s")

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` (a plain path-style PUT; moto does not check signatures, and boto3 is slow to import)."""
        request = urllib.request.Request(f"{self.url}/{bucket}", data=b"", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Terminate the child (kill it if it does not stop within ``timeout``) and reap it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
