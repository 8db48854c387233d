"""Where datasets are written: a local directory or an S3 prefix, with atomic file writes.

Both kinds give the guarantee the sink relies on: a reader sees either no file at a
name or the whole file. Locally that is a hidden temp file, fsync, rename and an fsync
of the directory. S3 has no rename, but a PUT is atomic: the object appears whole or
not at all, so the final (deterministic) name is written directly.

Every path given to a ``Storage`` is relative to its root and is checked not to climb
out of it.
"""
from __future__ import annotations

import os
import posixpath
from typing import Optional

from schemas.errors import CommitError, ConfigError


def _check_relative(rel: str) -> str:
    norm = posixpath.normpath(rel)
    if rel.startswith("/") or norm == ".." or norm.startswith("../") or "\\" in rel:
        raise CommitError(f"refusing to write {rel!r} outside the dataset root")
    return norm


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make renames and creations in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a local file so that readers see all of it or none: a hidden temp file
    (``.<name>.tmp-<pid>``, skipped by dataset readers), fsync, rename, fsync the dir."""
    directory, name = os.path.split(os.fspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


class LocalStorage:
    """A directory on a local (POSIX) filesystem."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def uri(self, rel: str = "") -> str:
        return os.path.join(self.root, _check_relative(rel)) if rel else self.root

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` so that readers never see a partial file."""
        write_file_atomic(self.uri(rel), data)

    def read(self, rel: str) -> Optional[bytes]:
        try:
            with open(self.uri(rel), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def list_dir(self, rel: str = "") -> list[str]:
        """Names in a directory (empty if it does not exist), hidden temp files included."""
        try:
            return sorted(os.listdir(self.uri(rel)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, rel: str) -> None:
        try:
            os.remove(self.uri(rel))
        except FileNotFoundError:
            pass

    def filesystem(self):
        """``(pyarrow filesystem, root path)`` for readers."""
        from pyarrow.fs import LocalFileSystem
        return LocalFileSystem(), self.root

    def try_lock(self, rel: str) -> Optional[int]:
        """An exclusive lock on ``rel`` (a file descriptor to keep open), or None if
        another process holds it. Released when the process exits, however it exits."""
        import fcntl
        path = self.uri(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd


class ObjectStorage:
    """An S3 (or S3-compatible) prefix through pyarrow's filesystem layer."""

    def __init__(self, uri: str, endpoint: Optional[str] = None) -> None:
        from pyarrow import fs as pafs
        if not uri.startswith("s3://") or len(uri) <= 5:
            raise ConfigError(f"dataset.path {uri!r} is not an s3://bucket/prefix URI")
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs = {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        self.fs = pafs.S3FileSystem(**kwargs)
        self.root = uri[len("s3://"):].rstrip("/")
        self._uri = uri.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{_check_relative(rel)}" if rel else self.root

    def uri(self, rel: str = "") -> str:
        return f"{self._uri}/{_check_relative(rel)}" if rel else self._uri

    def write_atomic(self, rel: str, data: bytes) -> None:
        """One PUT: S3 shows the whole object or none of it."""
        with self.fs.open_output_stream(self._path(rel)) as out:
            out.write(data)

    def read(self, rel: str) -> Optional[bytes]:
        try:
            with self.fs.open_input_stream(self._path(rel)) as f:
                return f.read()
        except (FileNotFoundError, OSError) as e:
            if isinstance(e, FileNotFoundError) or "NoSuchKey" in str(e) or "not found" in str(e).lower():
                return None
            raise

    def list_dir(self, rel: str = "") -> list[str]:
        from pyarrow import fs as pafs
        sel = pafs.FileSelector(self._path(rel), allow_not_found=True, recursive=False)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel))

    def remove(self, rel: str) -> None:
        try:
            self.fs.delete_file(self._path(rel))
        except FileNotFoundError:
            pass

    def filesystem(self):
        return self.fs, self.root

    def try_lock(self, rel: str) -> Optional[int]:
        """S3 has no locks: always granted (run one sink per S3 dataset; see the README)."""
        return -1


def open_storage(path: str):
    """The storage for ``dataset.path``: ``s3://bucket/prefix`` or a local directory."""
    if path.startswith("s3://"):
        return ObjectStorage(path)
    if "://" in path:
        raise ConfigError(f"dataset.path {path!r} has an unsupported scheme; use a local "
                          "path or s3://bucket/prefix")
    return LocalStorage(path)
