"""Integrity checks of a committed datapool (the Dagster asset checks call these)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from datapool_pipeline.datapool.store import DatapoolState

NORM_TOLERANCE = 1e-3


@dataclass
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict[str, int | float | str]


def duplicate_samples(state: DatapoolState) -> CheckOutcome:
    """Invariant 1: a sample is in the datapool at most once (so tags never overlap)."""
    ids = state.samples.select("sample_id", "tag")
    dups = ids.group_by("sample_id").len().filter(pl.col("len") > 1)
    examples = ", ".join(dups["sample_id"].head(3).to_list())
    return CheckOutcome(
        passed=dups.height == 0,
        description="every sample_id appears once" if dups.height == 0 else f"duplicated: {examples}",
        metadata={"samples": ids.height, "duplicated_sample_ids": dups.height},
    )


def empty_tags(state: DatapoolState) -> CheckOutcome:
    """Every committed tag holds at least one sample, and the manifests' counts match the tables."""
    counts = dict(state.samples.group_by("tag").len().iter_rows())
    empty = [c.tag for c in state.commits if counts.get(c.tag, 0) == 0]
    mismatched = [c.tag for c in state.commits if counts.get(c.tag, 0) != c.n_samples]
    latest = state.commits[-1] if state.commits else None
    return CheckOutcome(
        passed=not empty and not mismatched,
        description="no empty tag" if not empty and not mismatched else f"empty: {empty}; counts differ: {mismatched}",
        metadata={
            "tags": len(state.commits),
            "empty_tags": len(empty),
            "count_mismatches": len(mismatched),
            "latest_tag": latest.tag if latest else "",
            "latest_tag_samples": counts.get(latest.tag, 0) if latest else 0,
        },
    )


def embedding_norms(state: DatapoolState, tolerance: float = NORM_TOLERANCE, block: int = 65_536) -> CheckOutcome:
    """Stored embeddings are finite and L2-normalised (what the k-center distances assume)."""
    samples = state.samples
    non_finite = off_norm = 0
    worst = 0.0
    for start in range(0, samples.height, block):
        emb = samples["embedding"].slice(start, block).to_numpy().astype(np.float64, copy=False)
        finite = np.isfinite(emb).all(axis=1)
        non_finite += int((~finite).sum())
        dev = np.abs(np.linalg.norm(emb[finite], axis=1) - 1.0) if finite.any() else np.zeros(0)
        off_norm += int((dev > tolerance).sum())
        worst = max(worst, float(dev.max()) if dev.size else 0.0)
    passed = non_finite == 0 and off_norm == 0
    return CheckOutcome(
        passed=passed,
        description="all embeddings finite with unit norm"
        if passed
        else f"{non_finite} non-finite, {off_norm} with |norm - 1| > {tolerance}",
        metadata={
            "samples": samples.height,
            "non_finite": non_finite,
            "not_unit_norm": off_norm,
            "max_norm_deviation": worst,
        },
    )
