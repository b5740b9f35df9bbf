"""The datapool store: selected samples, tags, processed raw files, shard caches; atomic commits."""

from datapool_pipeline.datapool.store import INITIAL_TAG, LATEST_TAG, Commit, DatapoolState, DatapoolStore

__all__ = ["INITIAL_TAG", "LATEST_TAG", "Commit", "DatapoolState", "DatapoolStore"]
