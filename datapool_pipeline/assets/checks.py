"""Asset checks guarding a dataset's datapool, attached to its `tag` asset."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
    """The invariants as blocking checks of `tag`, run after each commit and on demand from the UI; one
    step reads the datapool once for all of them. A failed check stops the run before its report."""
    tag_key = dg.AssetKey([spec.asset_prefix, "tag"])
    specs = [
        dg.AssetCheckSpec(name, asset=tag_key, description=description, blocking=True)
        for name, (_, description) in _CHECKS.items()
    ]

    @dg.multi_asset_check(specs=specs, name=f"{spec.asset_prefix}__checks")
    def datapool_checks() -> Iterator[dg.AssetCheckResult]:
        state = DatapoolStore(storage_for(spec, "output")).load_state()
        for name, (fn, _) in _CHECKS.items():
            outcome = fn(state)
            yield dg.AssetCheckResult(
                asset_key=tag_key,
                check_name=name,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=outcome.description,
                metadata=outcome.metadata,
            )

    return [datapool_checks]
