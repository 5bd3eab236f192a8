"""Object storage for the scoring core: S3 (through a boto3 client and smart-open) and local paths.

Writes are atomic: :meth:`Storage.open_write` commits only when its ``with`` block exits cleanly
(S3: the multipart upload completes; local: a staged file is renamed into place) and leaves nothing
behind when the block raises. Airflow-free.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from airflow_provider_smrt.exceptions import OutputError

#: smart-open's multipart part size for our writes (S3's minimum is 5 MiB).
_PART_SIZE = 8 * 1024 * 1024
_DELETE_BATCH = 1000


@dataclass(frozen=True)
class ObjectInfo:
    """One object (or local file): its URI, size, and identity for change detection."""

    uri: str
    size: int
    etag: str | None = None
    version_id: str | None = None


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


def join_uri(base: str, name: str) -> str:
    """Join a prefix/directory URI and a relative name with exactly one slash."""
    return base.rstrip("/") + "/" + name.lstrip("/")


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


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
            from botocore.exceptions import ClientError

            try:
                head = self.s3.head_object(Bucket=bucket, Key=key, **self._owner)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return ObjectInfo(
                uri=uri,
                size=int(head.get("ContentLength", 0)),
                etag=str(head.get("ETag", "")).strip('"') or None,
                version_id=head.get("VersionId"),
            )
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
                for item in page.get("Contents", []):
                    found.append(
                        ObjectInfo(
                            uri=f"s3://{bucket}/{item['Key']}",
                            size=int(item.get("Size", 0)),
                            etag=str(item.get("ETag", "")).strip('"') or None,
                        )
                    )
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

    def open_read(self, info: ObjectInfo) -> IO[bytes]:
        """Open an object for streaming, ranged reads (seekable)."""
        if is_s3(info.uri):
            import smart_open

            params: dict[str, Any] = {"client": self.s3, "defer_seek": True}
            if self._owner:
                params["client_kwargs"] = {"S3.Client.get_object": dict(self._owner)}
            if info.version_id:
                params["version_id"] = info.version_id
            return smart_open.open(info.uri, "rb", compression="disable", transport_params=params)
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

            params: dict[str, Any] = {"client": self.s3, "min_part_size": _PART_SIZE}
            if self._write_args:
                params["client_kwargs"] = {
                    "S3.Client.create_multipart_upload": dict(self._write_args),
                    "S3.Client.put_object": dict(self._write_args),
                    "S3.Client.upload_part": dict(self._owner),
                    "S3.Client.complete_multipart_upload": dict(self._owner),
                    "S3.Client.abort_multipart_upload": dict(self._owner),
                }
            # Inside `with`: an exception aborts the multipart upload, so nothing partial is committed.
            body_failed = False
            handle: Any = None
            try:
                with smart_open.open(uri, "wb", compression="disable", transport_params=params) as fh:
                    handle = fh
                    try:
                        yield fh
                    except BaseException:
                        body_failed = True
                        raise
            except Exception as err:
                if not body_failed and handle is not None:
                    # The commit itself failed (e.g. CompleteMultipartUpload denied): smart-open leaves the
                    # multipart upload open then; abort it so no orphaned upload stays behind.
                    with contextlib.suppress(Exception):
                        handle.terminate()
                if body_failed and not _is_s3_error(err):
                    raise
                raise OutputError(
                    f"could not write {uri} ({_describe_s3_error(err)}): check that the bucket exists and that the "
                    "connection's identity may s3:PutObject there (and use the KMS key of s3_write_args, if any); "
                    "objects committed before this one are kept, and a rerun resumes from them"
                ) from err
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


def _is_s3_error(err: BaseException) -> bool:
    """A botocore error (the S3 call itself failed), as opposed to an error of the caller's block."""
    return type(err).__module__.startswith("botocore")


def _describe_s3_error(err: BaseException) -> str:
    """The S3 error code and message (never a payload or a credential), or the exception's type."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        return f"{error.get('Code', 'Unknown')}: {error.get('Message', '')}".strip()
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err and _is_s3_error(cause):
        return _describe_s3_error(cause)
    return f"{type(err).__name__}: {err}"
