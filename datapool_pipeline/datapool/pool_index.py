"""A persistent hnswlib index over the datapool's embeddings.

Large datapools are seeded with hnswlib (see selection.kcenter). Building the index costs more than
querying it (N = M = 1e5, d = 512, 2 cores: ~25 s to build, ~8 s to query every candidate), and the
datapool only ever grows by appending tags, so the index is kept in the output datasource and each run
only adds the samples committed since it was written. Labels are row numbers of the pool in commit order.

    datapool/index/<model fingerprint>.hnsw    hnswlib's own file format
    datapool/index/<model fingerprint>.json    which pool rows it holds (count + digest of their ids)

The index is a cache, not state: it is written after selection, outside the atomic commit; one that is
missing, unreadable, of another model or not a prefix of the current pool is rebuilt from the pool.

The returned index carries `vectors` (IndexVectors): its float32 vectors read from the index file through a
memory map, for the selector, which does not hold the pool a second time. hnswlib's own get_items converts
every vector to a Python list (~85 us a row: 85 s to read 1e6 pool rows, each run); the map reads them at
memory speed, and drops its pages after each read so they do not stay resident.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from datapool_pipeline.datapool.store import ROOT, DatapoolStore
from datapool_pipeline.selection.kcenter import HNSW_EF_CONSTRUCTION, HNSW_M, new_hnsw_index

INDEX_PREFIX = f"{ROOT}/index"
Log = Callable[[str], None]


def _silent(_: str) -> None:
    return None


@dataclass(frozen=True)
class IndexMeta:
    fingerprint: str
    dim: int
    size: int
    ids_digest: str
    ef_construction: int = HNSW_EF_CONSTRUCTION
    m_links: int = HNSW_M


def ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


# hnswlib's saveIndex header (hnswalg.h, unchanged from 0.6 to 0.8): offsetLevel0, max_elements,
# cur_element_count, size_data_per_element, label_offset, offsetData (size_t), maxlevel (int),
# enterpoint_node (uint32), maxM, maxM0, M (size_t), mult (double), ef_construction (size_t); then the
# level-0 block: cur_element_count elements of size_data_per_element bytes (links, vector, label).
_HEADER = struct.Struct("<QQQQQQiIQQQdQ")
_CHUNK = 8192  # labels read between two releases of the map's pages
_GROUP = 64  # vectors read between two releases (~16 MB mapped at most)


class IndexVectors:
    """The float32 vectors of a saved hnswlib index, by label, through a read-only memory map of its file
    (the map keeps the file's data even after the file is deleted)."""

    def __init__(self, path: str, dim: int) -> None:
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
            (offset0, _, count, element, label_offset, data_offset, *_rest) = _HEADER.unpack(head)
            if offset0 != 0 or data_offset + 4 * dim > label_offset or label_offset + 8 > element:
                raise ValueError(f"{path}: not an hnswlib index of dimension {dim}")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._map.madvise(mmap.MADV_RANDOM)  # no read-ahead or fault-around: a row maps its own pages only
        if len(self._map) < _HEADER.size + count * element:
            raise ValueError(f"{path}: truncated")
        self.dim, self.count = dim, int(count)
        self._vectors = np.ndarray((self.count, dim), np.float32, self._map, _HEADER.size + data_offset, (element, 4))
        strided = np.ndarray((self.count,), np.uint64, self._map, _HEADER.size + label_offset, (element,))
        labels = np.empty(self.count, np.uint64)
        for start in range(0, self.count, _CHUNK):  # every page of the file holds labels: a chunk at a time
            labels[start : start + _CHUNK] = strided[start : start + _CHUNK]
            self._release()
        if not np.array_equal(np.sort(labels), np.arange(self.count)):
            raise ValueError(f"{path}: labels are not the row numbers 0..{self.count - 1}")
        self.internal = np.empty(self.count, np.int64)  # label -> position in the file
        self.internal[labels.astype(np.int64)] = np.arange(self.count)

    def _release(self) -> None:
        """The map's pages leave this process (not the page cache). The whole map: a read also maps pages
        around its own (fault-around, large page-cache folios), and releasing only the rows' range left
        ~1 GB mapped after reading the 2.2 GB file once (1e6 x 512). ~10-20 us when little is mapped."""
        self._map.madvise(mmap.MADV_DONTNEED)

    def rows(self, labels: np.ndarray) -> np.ndarray:
        """The vectors of these labels (row numbers of the pool), float32, in the order given.

        A read maps more than its own pages (fault-around, large page-cache folios: ~200 KB a random
        row here), so rows are read _GROUP at a time and their pages released after each group."""
        positions = self.internal[np.asarray(labels, np.int64)]
        order = np.argsort(positions, kind="stable")  # read the file forwards
        out = np.empty((len(positions), self.dim), np.float32)
        for start in range(0, len(order), _GROUP):
            part = order[start : start + _GROUP]
            at = positions[part]
            out[part] = self._vectors[at]
            self._release()
        return out


@functools.cache
def hnsw_index_class() -> type:
    """hnswlib.Index with a `vectors` attribute (IndexVectors, or None): a plain hnswlib.Index takes no
    attributes. One class per process (hnswlib is imported on first use)."""
    import hnswlib

    return type("StoredHnswIndex", (hnswlib.Index,), {"vectors": None})


def open_index_file(path: str, dim: int, max_elements: int = 0) -> Any:
    """A saved hnswlib index (inner product) with its vectors readable by label (`vectors`)."""
    index = hnsw_index_class()(space="ip", dim=dim)
    index.load_index(path, max_elements=max_elements)
    index.vectors = IndexVectors(path, dim)
    return index


def load_pool_index(
    store: DatapoolStore, pool: np.ndarray, pool_ids: Sequence[str], fingerprint: str, *, log: Log = _silent
) -> Any:
    """An hnswlib index holding every row of `pool`, from the stored index plus the rows added since.

    `pool_ids[i]` is the sample id of `pool[i]`; the stored index is used only if it holds exactly the
    first rows of this pool (same ids, same order, same model), else it is rebuilt. The updated index is
    written back so the next run starts from it.
    """
    base = f"{INDEX_PREFIX}/{fingerprint}"
    dim = int(pool.shape[1])
    index, meta = _read(store, base, fingerprint, dim, pool_ids, len(pool))
    if index is None:
        log(f"building the datapool's hnswlib index over {len(pool)} samples")
        index = new_hnsw_index(dim, len(pool), cls=hnsw_index_class())
        index.add_items(np.ascontiguousarray(pool, np.float32), np.arange(len(pool)), num_threads=-1)
    elif meta.size < len(pool):
        log(f"datapool index: {meta.size} samples stored, adding {len(pool) - meta.size} committed since")
        new_rows = np.ascontiguousarray(pool[meta.size :], np.float32)
        index.add_items(new_rows, np.arange(meta.size, len(pool)), num_threads=-1)
    else:
        return index
    _write(store, base, index, IndexMeta(fingerprint, dim, len(pool), ids_digest(pool_ids)))
    return index


def _read(
    store: DatapoolStore, base: str, fingerprint: str, dim: int, pool_ids: Sequence[str], pool_size: int
) -> tuple[Any, IndexMeta | None]:
    storage = store.storage
    if not storage.exists(f"{base}.json"):
        return None, None
    try:
        meta = IndexMeta(**json.loads(storage.read_bytes(f"{base}.json")))
    except (TypeError, ValueError):
        return None, None
    if (
        meta.fingerprint != fingerprint
        or meta.dim != dim
        or not 0 < meta.size <= pool_size
        or meta.ids_digest != ids_digest(pool_ids[: meta.size])
    ):
        return None, None
    with tempfile.TemporaryDirectory(prefix="datapool-index-") as tmp:
        path = os.path.join(tmp, "index.hnsw")
        try:
            with open(path, "wb") as f:
                f.write(storage.read_bytes(f"{base}.hnsw"))
            index = open_index_file(path, dim, max_elements=pool_size)
        except Exception:  # noqa: BLE001 - a damaged or missing cache is rebuilt, never fatal
            return None, None
    if index.get_current_count() != meta.size:  # index and meta from different writes
        return None, None
    return index, meta


def _write(store: DatapoolStore, base: str, index: Any, meta: IndexMeta) -> None:
    with tempfile.TemporaryDirectory(prefix="datapool-index-") as tmp:
        path = os.path.join(tmp, "index.hnsw")
        index.save_index(path)
        index.vectors = IndexVectors(path, meta.dim)  # the file as written: the index's vectors, by label
        with open(path, "rb") as f:
            store.storage.write_bytes(f"{base}.hnsw", f.read())
    store.storage.write_bytes(f"{base}.json", json.dumps(asdict(meta)).encode())
