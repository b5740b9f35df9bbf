"""One interface over local folders and object stores.

Keys are relative, '/'-separated paths under the datasource's root prefix. Every backend provides
listing with version identity (size + etag, or mtime for local files), whole-object reads and writes,
and an atomic put-if-absent that the datapool commit relies on.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from datapool_pipeline.errors import DatapoolError


class StorageError(DatapoolError):
    """A datasource operation failed; the message names the location, never a credential."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    mtime: float

    @property
    def version(self) -> str:
        """What identifies this version of the object: etag where the backend has one."""
        return self.etag or f"{self.size}-{self.mtime:.6f}"


class Storage(abc.ABC):
    """A datasource: a root location plus operations on keys below it."""

    uri: str

    @abc.abstractmethod
    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        """Yield every object under prefix (recursively), in key order, streaming.

        Key order is the lexicographic order of the keys' code points (= UTF-8 bytes), the order S3, GCS
        and Azure list in. `start_after`: only keys strictly greater than it, and the backend starts the
        listing there (S3 StartAfter, GCS startOffset, Azure startFrom, local folders pruned while
        walking), so resuming a listing costs requests for what follows the key, not for what precedes it.
        """

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """The object's info, or None if it does not exist."""

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write (or overwrite) an object; readers never see a partial object."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object only if no object has that key; False if it existed. Atomic.

        Object stores also return True when the existing object holds exactly these bytes (a retried
        request whose first attempt was applied but whose response was lost)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; no error if it is already gone."""

    @abc.abstractmethod
    @contextlib.contextmanager
    def local_source(self, key: str) -> Iterator[str]:
        """A path or URL that ffmpeg / Pillow can read for the duration of the context."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def display(self, key: str = "") -> str:
        """A location for messages and reports (never contains credentials)."""
        return f"{self.uri.rstrip('/')}/{key}" if key else self.uri


def is_safe_key(key: str) -> bool:
    """False for keys that could escape the datasource root: empty, a leading '/', or a '', '.' or '..'
    segment (legal object names on S3, GCS and Azure, but never usable as paths); and for keys with
    control characters (a newline would split `datapool export`'s one-filename-per-line output)."""
    return (
        bool(key)
        and not key.startswith("/")
        and not any(p in ("", ".", "..") for p in key.split("/"))
        and not any(ord(c) < 32 or ord(c) == 127 for c in key)
    )


def check_key(key: str) -> str:
    """Reject keys that could escape the datasource root."""
    if not is_safe_key(key):
        raise ValueError(f"invalid storage key {key!r}")
    return key
