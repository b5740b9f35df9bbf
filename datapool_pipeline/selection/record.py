"""What the selection did, per strategy, kept with the commit (Commit.selection) for the run report.

The selection step stages its outcome in the staging meta (workflow/selection.py); `commit_record` keeps
the part the report needs in the commit manifest: the counts (new samples, what the degenerate-frame
filter and each THRESHOLD removed, candidates left, requested vs selected, why the selection stopped) and
the picks' statistics (SIMILARITY scores, WEIGHTS values). The strategies' settings are in Commit.config.
Only finite numbers are kept (JSON without NaN / Infinity); per-pick lists are not (manifests and
checkpoints stay small).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from datapool_pipeline.config import SelectionConfig

RECORD_FORMAT = 1
# Staging meta keys kept as they are (a strategy added later stages its outcome under its own key).
_KEPT = ("requested", "selected", "adopted", "stop_reason", "candidates", "candidates_in_pool", "filtered",
         "thresholds", "weights", "balance", "typicality")


def finite(value: Any, digits: int = 6) -> float | None:
    """A finite float rounded, else None (inf: e.g. the first pick's distance to an empty datapool)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, digits) if math.isfinite(number) else None


def value_stats(values: np.ndarray) -> dict[str, float | None]:
    """mean / min / max of the known (non-NaN, finite) values; None each when there is none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": None, "min": None, "max": None}
    return {"mean": finite(v.mean()), "min": finite(v.min()), "max": finite(v.max())}


def _key_values(candidates: pl.DataFrame, key: str) -> np.ndarray | None:
    from datapool_pipeline.selection import metadata

    if key in metadata.BUILTIN_COLUMNS:
        return metadata.column_values(candidates, key)
    if (column := metadata.user_column(key)) in candidates.columns:  # joined by workflow/user_metadata.py
        try:
            return candidates[column].cast(pl.Float64).fill_null(float("nan")).to_numpy().astype(np.float64)
        except Exception:  # noqa: BLE001 - a non-numeric column: no statistics, never a failed run
            return None
    return None


def weights_summary(candidates: pl.DataFrame, picks: Sequence[int], selection: SelectionConfig) -> list[dict[str, Any]]:
    """Per WEIGHTS entry: its key and strength, and the key's values over the picks vs over the candidates
    (the samples the greedy chose from); `unknown` counts candidates without a value."""
    out = []
    for entry in selection.strategies:
        if entry.strategy.type != "WEIGHTS":
            continue
        key = str(entry.input.key)
        values = _key_values(candidates, key)
        if values is None:
            out.append({"key": key, "strength": entry.strategy.strength, "picks": value_stats(np.empty(0)),
                        "candidates": value_stats(np.empty(0)), "unknown": candidates.height})
            continue
        index = np.asarray(list(picks), np.int64)
        out.append({"key": key, "strength": entry.strategy.strength, "picks": value_stats(values[index]),
                    "candidates": value_stats(values), "unknown": int(np.isnan(values).sum())})
    return out


def typicality_summary(density: np.ndarray | None, picks: Sequence[int]) -> dict[str, Any] | None:
    """TYPICALITY: the picks' kNN density (1: densest new sample) vs all candidates'; None without it."""
    if density is None:
        return None
    index = np.asarray(list(picks), np.int64)
    return {"picks": value_stats(density[index]), "candidates": value_stats(density)}


def commit_record(meta: dict[str, Any]) -> dict[str, Any]:
    """The selection record of a staged selection's meta (what Commit.selection holds)."""
    record: dict[str, Any] = {"format": RECORD_FORMAT}
    for key in _KEPT:
        if key in meta:
            record[key] = meta[key]
    record.setdefault("thresholds", [])
    record["first_distance"] = finite(meta.get("first_distance"))
    similarity = meta.get("similarity")
    if similarity is not None:
        record["similarity"] = {k: v for k, v in similarity.items() if k != "pick_scores"}
    removed = sum(int(n) for n in (meta.get("filtered") or {}).values())
    removed += sum(int(t.get("removed", 0)) for t in record["thresholds"])
    record["new_samples"] = int(meta.get("candidates", 0)) + removed  # before the filter and THRESHOLD
    return record
