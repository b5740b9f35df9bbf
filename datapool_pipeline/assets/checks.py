"""Asset checks guarding a dataset's datapool, attached to its `tag` asset."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg

from datapool_pipeline.assets.resources import storage_for
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datapool.integrity import CheckOutcome, duplicate_samples, embedding_norms, empty_tags
from datapool_pipeline.datapool.store import DatapoolState
from datapool_pipeline.datasets import DatasetSpec

_CHECKS: dict[str, tuple[Callable[[DatapoolState], CheckOutcome], str]] = {
    "no_sample_twice": (duplicate_samples, "Every sample is in the datapool at most once; tags never overlap."),
    "tags_not_empty": (empty_tags, "Every tag holds samples, as many as its commit manifest says."),
    "embeddings_unit_norm": (embedding_norms, "Every stored embedding is finite and L2-normalised."),
}


def build_datapool_checks(spec: DatasetSpec) -> list[dg.AssetChecksDefinition]:
    """One check per invariant; they run after each `tag` materialization and on demand from the UI."""
    tag_key = dg.AssetKey([spec.asset_prefix, "tag"])

    def make(name: str, fn: Callable[[DatapoolState], CheckOutcome], description: str) -> dg.AssetChecksDefinition:
        @dg.asset_check(asset=tag_key, name=name, description=description)
        def _check() -> dg.AssetCheckResult:
            state = DatapoolStore(storage_for(spec, "output")).load_state()
            outcome = fn(state)
            return dg.AssetCheckResult(
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=outcome.description,
                metadata=outcome.metadata,
            )

        return _check

    return [make(name, fn, description) for name, (fn, description) in _CHECKS.items()]
