"""What S3, GCS and Azure Blob datasources share: bucket + root prefix, key mapping, and how media
objects are handed to ffmpeg (range-read through a loopback proxy, or a temporary download)."""

from __future__ import annotations

import abc
import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

from datapool_pipeline.errors import ConfigError
from datapool_pipeline.storage.base import Storage, StorageError, check_key
from datapool_pipeline.storage.rangeproxy import serve_object
from datapool_pipeline.storage.retry import RETRY_ENV
from datapool_pipeline.storage.secrets import redact

MEDIA_MODE_ENV = "DATAPOOL_REMOTE_MEDIA"
MEDIA_MODES = ("stream", "download")
CHUNK = 8 * 1024 * 1024
_CLIENTS: dict[tuple[str, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def split_uri(uri: str, scheme: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix/' -> ('bucket', 'some/prefix')."""
    rest = uri.removeprefix(scheme)
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{uri}: missing bucket/container name, expected {scheme}NAME/optional/prefix")
    prefix = prefix.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise ConfigError(f"{uri}: invalid prefix")
    return bucket, prefix


def media_mode() -> str:
    mode = os.environ.get(MEDIA_MODE_ENV, "stream").strip().lower() or "stream"
    if mode not in MEDIA_MODES:
        raise ConfigError(f"{MEDIA_MODE_ENV}: must be one of {', '.join(MEDIA_MODES)}, got {mode!r}")
    return mode


class ObjectStore(Storage):
    """A `scheme://bucket/prefix` datasource; subclasses talk to one SDK."""

    scheme: str = ""
    page_size: int = 1000
    """Objects per listing request; listing streams page by page and never holds more than one."""

    def __init__(
        self, uri: str, client: Any = None, env_prefix: str = "", client_factory: Callable[[], Any] | None = None
    ) -> None:
        """`client`: an SDK client made by the caller (e.g. from a Dagster resource), used as given;
        `client_factory`: makes that client on first use instead; with neither, a client is made from the
        standard environment variables on first use. `env_prefix` (e.g. "RAW_") is prepended to the
        variable names that error messages point at."""
        self.bucket, self.prefix = split_uri(uri, self.scheme)
        self.uri = f"{self.scheme}{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.env_prefix = env_prefix
        self._client_factory = client_factory
        if client is not None:
            self.__dict__["client"] = self._bind(client)  # fills the cached_property below

    def env(self, name: str) -> str:
        """The name of a credential variable as this datasource's caller configured it."""
        return f"{self.env_prefix}{name}"

    # -- key mapping -----------------------------------------------------------------------------
    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _list_prefix(self, prefix: str) -> str:
        if self.prefix:
            return f"{self.prefix}/{prefix}"
        return prefix

    def _key(self, name: str) -> str | None:
        """The key of a listed object name, or None for folder placeholders ('dir/')."""
        key = name[len(self.prefix) + 1 :] if self.prefix else name
        return key if key and not key.endswith("/") else None

    # -- the SDK client, created on first use (definitions load without network or credentials) ----
    client_env: tuple[str, ...] = ()
    """Environment variables the client depends on: one shared (thread-safe) client per distinct set."""

    @cached_property
    def client(self) -> Any:
        if self._client_factory is not None:
            return self._bind(self._client_factory())
        cache_key = (type(self).__name__, *(os.environ.get(v, "") for v in (*self.client_env, *RETRY_ENV)))
        with _CLIENTS_LOCK:
            shared = _CLIENTS.get(cache_key)
            if shared is None:
                shared = _CLIENTS[cache_key] = self._make_client()
        return self._bind(shared)

    @abc.abstractmethod
    def _make_client(self) -> Any:
        """A client for the account (creating one loads service models and credentials: slow)."""

    def _bind(self, client: Any) -> Any:
        """The client this datasource uses, derived from the shared account client."""
        return client

    @abc.abstractmethod
    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Yield bytes start..end (inclusive) of the object, streaming."""

    def _holds(self, key: str, data: bytes) -> bool:
        """Whether the object at key has exactly these bytes.

        A conditional write is retried by the SDK when its response is lost (a reset connection, a
        timeout); if the lost attempt was applied, the retry is refused as "exists". The object is then
        ours when it holds our bytes (a commit manifest names its run and random part files, so another
        writer's is never byte-identical)."""
        try:
            return self.read_bytes(key) == data
        except FileNotFoundError:
            return False

    def error(self, action: str, key: str, reason: str) -> StorageError:
        where = self.display(key) if key else self.uri
        return StorageError(redact(f"{where}: {action} failed: {reason}"))

    # -- media for ffmpeg ------------------------------------------------------------------------
    @contextlib.contextmanager
    def local_source(self, key: str) -> Iterator[str]:
        """An http://127.0.0.1 URL that ffmpeg range-reads (default), or a temporary file that is
        always removed (DATAPOOL_REMOTE_MEDIA=download)."""
        info = self.stat(key)
        if info is None:
            raise FileNotFoundError(self.display(key))
        if media_mode() == "download":
            with self.download(key, info.size) as path:
                yield path
            return

        def read(start: int, end: int) -> Iterator[bytes]:
            return self.read_range(key, start, end)

        with serve_object(key, info.size, read) as url:
            yield url

    @contextlib.contextmanager
    def download(self, key: str, size: int) -> Iterator[str]:
        suffix = os.path.splitext(key)[1][:16]
        fd, path = tempfile.mkstemp(prefix="datapool-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                if size:
                    for chunk in self.read_range(key, 0, size - 1):
                        fh.write(chunk)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
