"""SIMILARITY queries: text prompts or query images embedded by the dataset's model, and the summary of the
picks' similarity to them."""

from __future__ import annotations

from typing import Any

import numpy as np

from datapool_pipeline.config import SelectionConfig, StrategyEntry
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.embedding import EmbeddingModel
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.media.image import ImageDecodeError, decode_image, resize_center_crop
from datapool_pipeline.storage import Storage


def similarity_entry(selection: SelectionConfig) -> tuple[int, StrategyEntry] | None:
    """The SIMILARITY entry and its position in strategies, or None when it is not configured."""
    return next(((i, e) for i, e in enumerate(selection.strategies) if e.strategy.type == "SIMILARITY"), None)


def check_query_keys(selection: SelectionConfig, input_storage: Storage) -> None:
    """SIMILARITY's query images exist in the input datasource (checked in the run's first step, before any
    decoding); whether they decode is found when they are embedded."""
    found = similarity_entry(selection)
    if found is None or found[1].input.keys is None:
        return
    position, entry = found
    for j, key in enumerate(entry.input.keys or ()):
        if not input_storage.exists(key):
            raise ConfigError(f"selection_config.strategies[{position}].input.keys[{j}]: {key} is not in the input "
                              f"datasource {input_storage.display()}")


def query_embeddings(
    spec: DatasetSpec, entry: StrategyEntry, position: int, model: EmbeddingModel, input_storage: Storage | None
) -> np.ndarray:
    """(Q, dim) unit query embeddings in the model's space: input.text through the text tower, input.keys
    decoded and embedded like any image of the input datasource."""
    if entry.input.text is not None:
        return model.embed_text(entry.input.text)
    assert entry.input.keys is not None, "the config requires text or keys for SIMILARITY"
    if input_storage is None:
        raise ValueError("SIMILARITY input.keys needs the input storage")
    frames = []
    for j, key in enumerate(entry.input.keys):
        where = f"selection_config.strategies[{position}].input.keys[{j}]"
        if not input_storage.exists(key):
            raise ConfigError(f"{where}: {key} is not in the input datasource {input_storage.display()}")
        try:
            image = decode_image(input_storage.read_bytes(key), min_side=model.image_size,
                                 max_decoded_megabytes=spec.images.max_decoded_megabytes)
        except (ImageDecodeError, OSError) as exc:
            raise ConfigError(f"{where}: {key} is not a readable image ({exc})") from None
        frames.append(resize_center_crop(image, model.image_size))
    return model.embed(np.stack(frames))


def similarity_summary(
    entry: StrategyEntry, queries: int, raw: np.ndarray, picks: list[int]
) -> dict[str, Any]:
    """What SIMILARITY did: the picks' maximum cosine similarity to the queries (pick order) against the
    same over all new samples."""
    picked = raw[picks] if picks else np.empty(0)
    kind = "text" if entry.input.text is not None else "keys"
    stats = {
        "query": kind,
        "queries": queries,
        "strength": entry.strategy.strength,
        "picks_mean": round(float(picked.mean()), 4) if len(picked) else None,
        "picks_max": round(float(picked.max()), 4) if len(picked) else None,
        "picks_min": round(float(picked.min()), 4) if len(picked) else None,
        "candidates_mean": round(float(raw.mean()), 4) if len(raw) else None,
        "candidates_max": round(float(raw.max()), 4) if len(raw) else None,
    }
    return {**stats, "pick_scores": [round(float(s), 4) for s in picked]}


def similarity_line(summary: dict[str, Any]) -> str:
    """One log line of similarity_summary."""
    if summary["picks_mean"] is None:
        return f"SIMILARITY ({summary['queries']} {summary['query']} queries): no picks"
    return (
        f"SIMILARITY ({summary['queries']} {summary['query']} queries, strength {summary['strength']:g}): the picks' "
        f"cosine similarity to the queries is {summary['picks_mean']:.3f} on average (min {summary['picks_min']:.3f}, "
        f"max {summary['picks_max']:.3f}); over all new samples {summary['candidates_mean']:.3f} "
        f"(max {summary['candidates_max']:.3f})"
    )
