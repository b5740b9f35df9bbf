"""Local folder datasource."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISFIFO, S_ISSOCK

from datapool_pipeline.storage.base import ObjectInfo, Storage, check_key

_SPECIAL = ((S_ISFIFO, "named pipe (FIFO)"), (S_ISSOCK, "socket"), (S_ISCHR, "character device"),
            (S_ISBLK, "block device"))


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.uri = str(self.root)
        self.not_regular: list[tuple[str, str, str]] = []
        """(key, version, kind) of the entries the last `list()` passed over because they are not regular
        files: named pipes, sockets, devices. Never opened (opening a FIFO blocks); discovery reports them
        as skipped."""

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        self.not_regular = []
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        rel = Path(base).relative_to(self.root).as_posix()
        yield from self._walk(base, "" if rel == "." else f"{rel}/", start_after)

    def _walk(self, folder: Path | str, rel: str, after: str) -> Iterator[ObjectInfo]:
        """Keys below `folder` (whose keys start with `rel`) that sort after `after`, in key order.

        A folder's entries are sorted with sub-folders named `name/`, which puts every key in global
        lexicographic order, the order object stores list in; sub-folders whose keys all sort before
        `after` are skipped without being read. Like os.walk, unreadable sub-folders are skipped and
        symbolic links to folders are not followed."""
        try:
            with os.scandir(folder) as it:
                entries = []
                for entry in it:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        continue
                    if is_dir and entry.is_symlink():
                        continue
                    entries.append((entry.name + "/" if is_dir else entry.name, entry))
        except OSError:
            return
        entries.sort(key=lambda pair: pair[0])
        for name, entry in entries:
            key = rel + name
            if name.endswith("/"):
                # Every key below starts with `key`: all of them sort before `after` when `after` is
                # greater than `key` and does not start with it.
                if after and after > key and not after.startswith(key):
                    continue
                yield from self._walk(entry.path, key, after)
            elif not name.startswith(".tmp-") and (not after or key > after):
                info = self._listed(key, Path(entry.path))
                if info is not None:
                    yield info

    def _listed(self, key: str, path: Path) -> ObjectInfo | None:
        """`_info` for a listed entry; an entry that is not a regular file goes to `not_regular`."""
        info = self._info(key, path)
        if info is None:
            try:
                st = path.stat()  # stat never opens: safe on a FIFO
            except OSError:
                return None
            kind = next((name for test, name in _SPECIAL if test(st.st_mode)), None)
            if kind:
                self.not_regular.append((key, f"{st.st_size}-{st.st_mtime_ns}", kind))
        return info

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        # Local files have no etag: size + nanosecond mtime identify a version.
        return ObjectInfo(key=key, size=st.st_size, etag=f"{st.st_size}-{st.st_mtime_ns}", mtime=st.st_mtime)

    def stat(self, key: str) -> ObjectInfo | None:
        return self._info(key, self._path(key))

    def temp_files(self) -> Iterator[ObjectInfo]:
        """Leftovers of interrupted atomic writes: `.tmp-*` files next to their target, which `list`
        hides (a SIGKILL between mkstemp and the rename leaves one). `delete(info.key)` removes one."""
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                if name.startswith(".tmp-"):
                    key = name if rel_dir == "." else f"{rel_dir}/{name}"
                    info = self._info(key, Path(dirpath) / name)
                    if info is not None:
                        yield info

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            # link() fails if the target exists: the complete file appears atomically or not at all.
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    @contextlib.contextmanager
    def local_source(self, key: str) -> Iterator[str]:
        yield str(self._path(key))
