"""``smrt-local``: run the local stack (``up``), run a command against it (``run``), or seed demo data.

Examples::

    smrt-local up --state-file .smrt/stack.json
    smrt-local run -- python -m pytest -q
    smrt-local seed-demo --s3-endpoint-url http://127.0.0.1:5000 --uri s3://smrt-local/demo/diabetes/
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from airflow_provider_smrt.local.stack import LocalStack


def _add_stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--s3-port", type=int, default=0, help="moto S3 port (default: a free one)")
    parser.add_argument("--runtime-port", type=int, default=0, help="SageMaker Runtime port (default: a free one)")
    parser.add_argument(
        "--no-verify-signatures",
        dest="verify_signatures",
        action="store_false",
        default=None,
        help="accept invocations without a valid SigV4 signature (default: verify, unless "
        "SMRT_LOCAL_VERIFY_SIGNATURES=0)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smrt-local", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the stack and keep it running until SIGINT/SIGTERM")
    _add_stack_options(up)
    up.add_argument("--state-file", type=Path, help="write the URLs and connection here (JSON) once ready")
    run = commands.add_parser("run", help="start the stack, run CMD against it, stop, exit with CMD's code")
    _add_stack_options(run)
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    seed = commands.add_parser("seed-demo", help="write the demo Parquet dataset to S3")
    seed.add_argument("--s3-endpoint-url", required=True)
    seed.add_argument("--uri", default="s3://smrt-local/demo/diabetes/")
    seed.add_argument("--rows", type=int, default=10_000)
    seed.add_argument("--files", type=int, default=4)
    seed.add_argument("--seed", type=int, default=0)
    return parser


class _Stop:
    """Turns SIGINT/SIGTERM into an event (and remembers the signal)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self.event.set()


def _write_atomically(path: Path, doc: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _up(args: argparse.Namespace) -> int:
    stop = _Stop()
    stop.install()
    state_file: Path | None = args.state_file
    with LocalStack(
        host=args.host,
        s3_port=args.s3_port,
        runtime_port=args.runtime_port,
        verify_signatures=args.verify_signatures,
    ) as stack:
        try:
            print(f"export AIRFLOW_CONN_AWS_DEFAULT={shlex.quote(stack.airflow_connection())}")
            print(f"export SMRT_S3_ENDPOINT_URL={stack.s3_endpoint_url}")
            print(f"export SMRT_RUNTIME_ENDPOINT_URL={stack.runtime_endpoint_url}")
            print(f"# S3: {stack.s3_endpoint_url}  SageMaker Runtime: {stack.runtime_endpoint_url}  (Ctrl-C stops)")
            sys.stdout.flush()
            if state_file is not None:
                _write_atomically(
                    state_file,
                    {
                        "s3_endpoint_url": stack.s3_endpoint_url,
                        "runtime_endpoint_url": stack.runtime_endpoint_url,
                        "airflow_conn": stack.airflow_connection(),
                        "pid": os.getpid(),
                    },
                )
            # Poll: a signal the kernel delivers to a server thread only runs the Python handler once the main
            # thread wakes up; an untimed wait could sleep through it forever.
            while not stop.event.wait(0.2):
                pass
        finally:
            if state_file is not None:
                state_file.unlink(missing_ok=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    cmd: list[str] = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("smrt-local run: give a command after --", file=sys.stderr)
        return 2
    with LocalStack(
        host=args.host,
        s3_port=args.s3_port,
        runtime_port=args.runtime_port,
        verify_signatures=args.verify_signatures,
    ) as stack:
        env = {**os.environ, **stack.environment()}
        try:
            child = subprocess.Popen(cmd, env=env)
        except OSError as err:
            print(f"smrt-local run: cannot start {cmd[0]}: {err.strerror}", file=sys.stderr)
            return 127

        def forward(signum: int, frame: FrameType | None) -> None:
            child.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = _wait_child(child)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if child.poll() is None:
                child.kill()
                child.wait()
    return code if code >= 0 else 128 - code


def _wait_child(child: subprocess.Popen[bytes]) -> int:
    """Wait for ``child`` in short slices, so that forwarded signals are handled promptly."""
    while True:
        try:
            return child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue


def _seed_demo(args: argparse.Namespace) -> int:
    import boto3
    from botocore.config import Config

    from airflow_provider_smrt.local.demo_data import write_demo_dataset
    from airflow_provider_smrt.local.stack import CREDENTIALS
    from airflow_provider_smrt.local.wire import REGION

    s3 = boto3.client(
        "s3",
        endpoint_url=args.s3_endpoint_url,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}),
        **CREDENTIALS,
    )
    bucket = args.uri[5:].split("/", 1)[0] if args.uri.startswith("s3://") else ""
    if bucket:
        try:
            s3.head_bucket(Bucket=bucket)
        except s3.exceptions.ClientError:
            s3.create_bucket(Bucket=bucket)
    written = write_demo_dataset(s3_client=s3, uri=args.uri, rows=args.rows, files=args.files, seed=args.seed)
    print(f"wrote {args.rows} rows in {len(written)} files under {args.uri}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smrt-local`` console script."""
    args = _parser().parse_args(argv)
    handlers = {"up": _up, "run": _run, "seed-demo": _seed_demo}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
