"""A persistent hnswlib index over the datapool's embeddings.

Large datapools are seeded with hnswlib (see selection.kcenter). Building the index costs more than
querying it (N = M = 1e5, d = 512, 2 cores: ~25 s to build, ~8 s to query every candidate), and the
datapool only ever grows by appending tags, so the index is kept in the output datasource and each run
only adds the samples committed since it was written. Labels are row numbers of the pool in commit order.

    datapool/index/<model fingerprint>.hnsw    hnswlib's own file format
    datapool/index/<model fingerprint>.json    which pool rows it holds (count + digest of their ids)

The index is a cache, not state: it is written after selection, outside the atomic commit; one that is
missing, unreadable, of another model or not a prefix of the current pool is rebuilt from the pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from datapool_pipeline.datapool.store import ROOT, DatapoolStore
from datapool_pipeline.selection.kcenter import HNSW_EF_CONSTRUCTION, HNSW_M, build_hnsw_index

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
        index = build_hnsw_index(pool)
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
    import hnswlib

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
            index = hnswlib.Index(space="ip", dim=dim)
            index.load_index(path, max_elements=pool_size)
        except Exception:  # noqa: BLE001 - a damaged or missing cache is rebuilt, never fatal
            return None, None
    if index.get_current_count() != meta.size:  # index and meta from different writes
        return None, None
    return index, meta


def _write(store: DatapoolStore, base: str, index: Any, meta: IndexMeta) -> None:
    with tempfile.TemporaryDirectory(prefix="datapool-index-") as tmp:
        path = os.path.join(tmp, "index.hnsw")
        index.save_index(path)
        with open(path, "rb") as f:
            store.storage.write_bytes(f"{base}.hnsw", f.read())
    store.storage.write_bytes(f"{base}.json", json.dumps(asdict(meta)).encode())
