"""Object storage for the scoring core: S3 (through a boto3 client) and local paths.

Writes are atomic: :meth:`Storage.open_write` commits only when its ``with`` block exits cleanly
(S3: smart-open's single-part writer sends one PutObject of the body, buffered in a temporary file;
local: a staged file is renamed into place) and leaves nothing behind when the block raises.

Reads of S3 objects go through :class:`S3RangeReader`: one bounded, ranged GetObject per read, pinned
to the object's ETag or version. A Parquet reader seeks (footer, then each coalesced range of column
chunks); smart-open's reader opens an open-ended GET at every seek, several times the requests
(measured in docs/performance.md). Airflow-free.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from airflow_provider_smrt.exceptions import InputDataError, OutputError
from airflow_provider_smrt.s3 import (
    ObjectInfo,
    describe_s3_error,
    error_code,
    is_not_found,
    is_s3,
    is_s3_client_error,
    split_s3,
)

__all__ = ["S3RangeReader", "Storage"]

_DELETE_BATCH = 1000


class Storage:
    """Lists, reads, writes (atomically) and deletes objects on S3 or the local filesystem.

    :param s3_client: a boto3 S3 client (e.g. ``S3Hook(...).get_conn()``); needed only for s3:// URIs.
    :param write_extra_args: extra arguments for every S3 write (``ServerSideEncryption``,
        ``SSEKMSKeyId``, ``ExpectedBucketOwner``...), applied to PutObject and CreateMultipartUpload.
    :param expected_bucket_owner: sent as ``ExpectedBucketOwner`` on every S3 call that takes it.
    """

    def __init__(
        self,
        *,
        s3_client: Any = None,
        write_extra_args: dict[str, Any] | None = None,
        expected_bucket_owner: str | None = None,
    ) -> None:
        self._s3 = s3_client
        self._owner = {"ExpectedBucketOwner": expected_bucket_owner} if expected_bucket_owner else {}
        self._write_args = {**(write_extra_args or {}), **self._owner}

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            raise ValueError("an S3 client is needed for s3:// URIs")
        return self._s3

    # -- listing ---------------------------------------------------------------------------------

    def stat(self, uri: str) -> ObjectInfo | None:
        """The object at exactly ``uri``, or None."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            if not key or key.endswith("/"):
                return None
            try:
                head = self.s3.head_object(Bucket=bucket, Key=key, **self._owner)
            except Exception as err:
                if is_not_found(err):
                    return None
                raise
            return ObjectInfo.from_head(uri, head)
        path = Path(uri)
        if not path.is_file():
            return None
        st = path.stat()
        return ObjectInfo(uri=str(path.resolve()), size=st.st_size, etag=f"{st.st_mtime_ns:x}-{st.st_size:x}")

    def list(self, uri: str) -> list[ObjectInfo]:
        """Every object under a prefix or directory, recursively, sorted by URI."""
        if is_s3(uri):
            bucket, prefix = split_s3(uri)
            if prefix and not prefix.endswith("/"):
                prefix += "/"
            found: list[ObjectInfo] = []
            paginator = self.s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **self._owner):
                found.extend(ObjectInfo.from_listing(bucket, item) for item in page.get("Contents", []))
            return sorted(found, key=lambda info: info.uri)
        root = Path(uri)
        if not root.is_dir():
            return []
        found = []
        for path in sorted(root.rglob("*")):
            if path.is_file():
                info = self.stat(str(path))
                if info is not None:
                    found.append(info)
        return found

    # -- reading ---------------------------------------------------------------------------------

    def open_read(self, info: ObjectInfo) -> IO[bytes] | S3RangeReader:
        """Open an object for random access: on S3, each read is one ranged GET (see :class:`S3RangeReader`).

        ``info.size`` of 0 means unknown (one HeadObject finds it); an ETag or version in ``info`` pins
        the reads to that content.
        """
        if is_s3(info.uri):
            bucket, key = split_s3(info.uri)
            size: int | None = info.size
            if not size:
                head = self.s3.head_object(Bucket=bucket, Key=key, **self._owner)
                size = int(head.get("ContentLength", 0))
            return S3RangeReader(
                self.s3, bucket, key, size=size, etag=info.etag, version_id=info.version_id, extra=self._owner
            )
        return open(info.uri, "rb")

    def read_bytes(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            extra: dict[str, Any] = dict(self._owner)
            if max_bytes is not None:
                extra["Range"] = f"bytes=0-{max_bytes - 1}"
            return bytes(self.s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read())
        with open(uri, "rb") as fh:
            return fh.read() if max_bytes is None else fh.read(max_bytes)

    # -- writing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def open_write(self, uri: str) -> Iterator[IO[bytes]]:
        """Write an object atomically: committed when the block exits cleanly, nothing left if it raises."""
        if is_s3(uri):
            import smart_open

            # One PutObject per object (a part is at most one work unit): a third of the requests of a
            # multipart upload, and a killed run leaves no incomplete upload behind. The body is
            # buffered in an anonymous temporary file, so memory stays flat whatever the part's size.
            spool = tempfile.TemporaryFile(prefix="smrt-put-")
            params: dict[str, Any] = {"client": self.s3, "multipart_upload": False, "writebuffer": spool}
            if self._write_args:
                params["client_kwargs"] = {"S3.Client.put_object": dict(self._write_args)}
            # Inside `with`: an exception discards the buffered body, so nothing partial is committed.
            body_failed = False
            try:
                with smart_open.open(uri, "wb", compression="disable", transport_params=params) as fh:
                    try:
                        yield fh
                    except BaseException:
                        body_failed = True
                        raise
            except Exception as err:
                if body_failed and not is_s3_client_error(err):
                    raise
                raise OutputError(
                    f"could not write {uri} ({describe_s3_error(err)}): check that the bucket exists and that the "
                    "connection's identity may s3:PutObject there (and use the KMS key of s3_write_args, if any); "
                    "objects committed before this one are kept, and a rerun resumes from them"
                ) from err
            finally:
                spool.close()
            return
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(staged, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(staged, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()

    def write_bytes(self, uri: str, data: bytes) -> None:
        with self.open_write(uri) as fh:
            fh.write(data)

    def delete(self, uris: Sequence[str]) -> None:
        """Delete objects (missing ones are fine)."""
        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            if is_s3(uri):
                bucket, key = split_s3(uri)
                by_bucket.setdefault(bucket, []).append(key)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(uri)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), _DELETE_BATCH):
                chunk = keys[start : start + _DELETE_BATCH]
                response = self.s3.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True}, **self._owner
                )
                errors = response.get("Errors") or []
                if errors:
                    first = errors[0]
                    raise OSError(
                        f"could not delete s3://{bucket}/{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                    )


class S3RangeReader(io.RawIOBase):
    """A read-only, seekable view of one S3 object in which every read is one bounded, ranged GetObject.

    Seeking costs nothing; ``read(n)`` fetches exactly the bytes asked for. Given to
    ``pyarrow.parquet.ParquetFile(..., pre_buffer=True)``, whose reads are the footer and then one
    coalesced range of column chunks per row-group window, that is one request per range. Reads carry
    ``IfMatch`` (the ETag seen at planning) or ``VersionId``, so an object replaced during the run fails
    with a clear :class:`InputDataError` instead of mixing two versions' bytes.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        size: int,
        etag: str | None = None,
        version_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._client = client
        self._bucket = bucket
        self._key = key
        self._size = size
        self._position = 0
        self._params: dict[str, Any] = dict(extra or {})
        if version_id:
            self._params["VersionId"] = version_id
        elif etag:
            self._params["IfMatch"] = etag if etag.startswith('"') else f'"{etag}"'
        self.requests = 0

    @property
    def uri(self) -> str:
        return f"s3://{self._bucket}/{self._key}"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence!r}")
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on a closed S3 object reader")
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        if end <= self._position:
            return b""
        try:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={self._position}-{end - 1}", **self._params
            )
            data = bytes(response["Body"].read())
        except Exception as err:
            if error_code(err) in ("PreconditionFailed", "412"):
                raise InputDataError(
                    f"{self.uri} changed while it was being read (its ETag is no longer the one seen when the run "
                    "was planned): rerun the task once the input is final; parts already written are kept, and "
                    "the changed file is scored again"
                ) from err
            raise
        self.requests += 1
        if len(data) != end - self._position:
            raise OSError(
                f"{self.uri}: asked for bytes {self._position}-{end - 1} and got {len(data)} bytes: the object "
                "changed or the connection broke; rerun the task"
            )
        self._position = end
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)
