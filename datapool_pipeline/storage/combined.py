"""Several inputs read as one datasource, so one datapool grows from several buckets or folders.

The keys of a named input are qualified as `<name>:<key>` (equal keys in two inputs never collide); the
keys of the one unnamed input stay as they are, which is how a dataset keeps its datapool when an input is
added. Listing merges the inputs in key order, so a resumed listing (`start_after`) works across them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
from collections.abc import Iterator

from datapool_pipeline.storage.base import ObjectInfo, Storage, StorageError

SEPARATOR = ":"


class CombinedInputs(Storage):
    def __init__(self, members: list[tuple[str | None, Storage]]) -> None:
        if sum(name is None for name, _ in members) > 1:
            raise ValueError("at most one input may be unnamed")
        self.members = members
        self.uri = " + ".join(storage.uri for _, storage in members)
        self._named = {name: storage for name, storage in members if name is not None}
        self._unnamed = next((storage for name, storage in members if name is None), None)

    # -- keys ---------------------------------------------------------------------------------------
    def route(self, key: str) -> tuple[str | None, Storage, str]:
        """(input name, its storage, the key inside it) of a qualified key."""
        name, sep, rest = key.partition(SEPARATOR)
        if sep and name in self._named:
            return name, self._named[name], rest
        if self._unnamed is None:
            raise StorageError(f"{key}: names no input of {self.uri} (expected <input name>{SEPARATOR}<key>)")
        return None, self._unnamed, key

    def input_of(self, key: str) -> str:
        """The location of the input a qualified key belongs to."""
        return self.route(key)[1].uri

    def _ambiguous(self, key: str) -> bool:
        """A key of the unnamed input that reads as a named input's key: never listed (it could not be
        told apart); docs/configuration.md says so."""
        name, sep, _ = key.partition(SEPARATOR)
        return bool(sep) and name in self._named

    # -- Storage --------------------------------------------------------------------------------------
    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        streams = []
        for name, storage in self.members:
            window = _member_window(name, prefix, start_after)
            if window is None:
                continue
            streams.append(self._qualified(name, storage, *window))
        yield from heapq.merge(*streams, key=lambda info: info.key)

    def _qualified(self, name: str | None, storage: Storage, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        for info in storage.list(prefix, start_after):
            if name is None:
                if not self._ambiguous(info.key):
                    yield info
            else:
                yield dataclasses.replace(info, key=f"{name}{SEPARATOR}{info.key}")

    def stat(self, key: str) -> ObjectInfo | None:
        name, storage, inner = self.route(key)
        info = storage.stat(inner)
        return info if info is None or name is None else dataclasses.replace(info, key=key)

    def read_bytes(self, key: str) -> bytes:
        _, storage, inner = self.route(key)
        return storage.read_bytes(inner)

    def write_bytes(self, key: str, data: bytes) -> None:
        _, storage, inner = self.route(key)
        storage.write_bytes(inner, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        _, storage, inner = self.route(key)
        return storage.put_if_absent(inner, data)

    def delete(self, key: str) -> None:
        _, storage, inner = self.route(key)
        storage.delete(inner)

    @contextlib.contextmanager
    def local_source(self, key: str) -> Iterator[str]:
        _, storage, inner = self.route(key)
        with storage.local_source(inner) as source:
            yield source

    def display(self, key: str = "") -> str:
        if not key:
            return self.uri
        _, storage, inner = self.route(key)
        return storage.display(inner)


def members_of(storage: Storage) -> list[Storage]:
    """The single datasources behind a storage (itself, unless it combines several inputs)."""
    return [s for _, s in storage.members] if isinstance(storage, CombinedInputs) else [storage]


def input_name_of(key: str, storage: Storage) -> str:
    """The name of the input a sample id comes from ('' for the unnamed input or a single input)."""
    if isinstance(storage, CombinedInputs):
        return storage.route(key)[0] or ""
    return ""


def _member_window(name: str | None, prefix: str, start_after: str) -> tuple[str, str] | None:
    """The (prefix, start_after) inside one input for a qualified (prefix, start_after), or None when no
    key of that input can match."""
    if name is None:
        return prefix, start_after
    head = f"{name}{SEPARATOR}"
    if prefix.startswith(head):
        inner_prefix = prefix[len(head) :]
    elif head.startswith(prefix):
        inner_prefix = ""
    else:
        return None
    if start_after.startswith(head):
        inner_after = start_after[len(head) :]
    elif start_after < head:
        inner_after = ""
    else:
        return None  # every key of this input sorts before start_after
    return inner_prefix, inner_after
