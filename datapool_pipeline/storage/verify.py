"""Run-start access check: read on the input datasource, write + delete on the output datasource.

Catches a missing bucket, rejected credentials or a read-only output before any decoding or embedding,
with a message that names the dataset and the datasource (never a credential).
"""

from __future__ import annotations

import itertools
import os
import uuid

from datapool_pipeline.errors import ConfigError
from datapool_pipeline.storage.base import Storage, StorageError, is_safe_key
from datapool_pipeline.storage.combined import members_of
from datapool_pipeline.storage.local import LocalStorage
from datapool_pipeline.storage.objectstore import ObjectStore
from datapool_pipeline.storage.secrets import redact

MARKER_PREFIX = "datapool/access-check"


class AccessCheckError(ConfigError):
    """A datasource is not readable / writable with the credentials in the environment."""


def verify_access(dataset: str, input_storage: Storage, output_storage: Storage) -> None:
    """Raise AccessCheckError unless the input can be listed and read and the output written."""
    check_read(dataset, input_storage)
    check_write(dataset, output_storage)


def check_read(dataset: str, storage: Storage) -> None:
    for member in members_of(storage):
        _check_read_one(dataset, member)


def _check_read_one(dataset: str, storage: Storage) -> None:
    if not isinstance(storage, ObjectStore):
        return  # a missing local folder is reported as "no new raw files" with its path
    try:
        listing = storage.list()
        # The first readable object among the first few (keys that could escape a folder are skipped).
        first = next(
            (i for i in itertools.islice(listing, 100) if i.size > 0 and is_safe_key(i.key)), None
        )
        listing.close()
        if first is not None:
            for _ in storage.read_range(first.key, 0, 0):
                pass
    except (StorageError, ConfigError, OSError) as exc:
        raise _failure(dataset, "input", storage, "cannot read", exc) from None


def check_write(dataset: str, storage: Storage) -> None:
    if isinstance(storage, LocalStorage):
        # No marker in a local folder: the nearest existing folder must be writable.
        folder = next(p for p in (storage.root.resolve(), *storage.root.resolve().parents) if p.exists())
        if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            raise _failure(dataset, "output", storage, "cannot write to", PermissionError(f"{folder} is not writable"))
        return
    key = f"{MARKER_PREFIX}/{uuid.uuid4().hex}.txt"
    try:
        storage.write_bytes(key, b"datapool write check; safe to delete\n")
    except (StorageError, ConfigError, OSError) as exc:
        raise _failure(dataset, "output", storage, "cannot write to", exc) from None
    try:
        storage.delete(key)
    except (StorageError, ConfigError, OSError) as exc:
        raise _failure(dataset, "output", storage, "cannot delete from", exc) from None


def _failure(dataset: str, role: str, storage: Storage, what: str, exc: BaseException) -> AccessCheckError:
    detail = str(exc)
    location = storage.display()
    detail = detail.split(": ", 1)[1] if detail.startswith(location) and ": " in detail else detail
    return AccessCheckError(
        redact(
            f"dataset '{dataset}': {what} the {role} datasource {location}: {detail} "
            "(set bypass_verify: true in datasets.yaml to skip this check)"
        )
    )
