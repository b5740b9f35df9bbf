"""Built-in metadata per sample (computed in the embedding pass) and the METADATA strategies on it (and on
the user table's numeric columns, joined in as user:<key> by workflow/user_metadata.py).

The embedding pass already holds every frame (image) decoded at the model's input size; from that frame
it computes, at a small cost next to the model:

- brightness: mean luma (0..255, Rec. 601 weights),
- contrast: standard deviation of luma,
- sharpness: variance of the 4-neighbour Laplacian of luma (low: blurred or flat frames),
- pixel_correlation: autocorrelation of luma between neighbouring pixels, the smaller of horizontal and
  vertical (natural and rendered scenes: above 0.5, mostly above 0.8; noise/static: about 0; flat frames,
  contrast below FLAT_CONTRAST: 1). Neighbours
  are one pixel apart at the source's resolution: a source smaller than the model size is upscaled, and
  interpolation correlates adjacent pixels even of pure noise, so there the lag is the upscale factor
  rounded up (at most MAX_CORRELATION_LAG); see pixel_correlation(),

and from the raw file: timestamp (s, videos; 0 for images), duration (s, videos), width and height (of
the raw file, not the model-size frame) and file_size (bytes). They are columns of each shard's
embeddings table; shards embedded before these columns existed load with the columns null.

THRESHOLD keeps only candidates whose value passes `{threshold, operation}` (a null value never passes);
WEIGHTS turns a key's values into a [0, 1] score (min-max over the candidates, null -> 0) that the
combined greedy of selection/strategies.py adds with the entry's strength.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from datapool_pipeline.datapool.tables import EMBEDDING_METADATA_SCHEMA

if TYPE_CHECKING:
    from datapool_pipeline.config import SelectionConfig
    from datapool_pipeline.datasets import FilterSpec

# Built-in key -> column of the shard embeddings table (timestamp is the existing timestamp_s column).
BUILTIN_COLUMNS: dict[str, str] = {
    "brightness": "brightness",
    "contrast": "contrast",
    "sharpness": "sharpness",
    "pixel_correlation": "pixel_correlation",
    "timestamp": "timestamp_s",
    "duration": "duration_s",
    "width": "width",
    "height": "height",
    "file_size": "file_size",
}
BUILTIN_KEYS = tuple(BUILTIN_COLUMNS)  # = config.BUILTIN_METADATA_KEYS (test_metadata checks)

# The columns this module adds to the embeddings table (timestamp_s was there before).
METADATA_SCHEMA = EMBEDDING_METADATA_SCHEMA

OPERATIONS = ("BIGGER", "BIGGER_EQUAL", "SMALLER", "SMALLER_EQUAL")

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
MAX_CORRELATION_LAG = 4
"""Largest lag of pixel_correlation: sources down to a quarter of the model size (56 px at 224)."""


def luma_of(frame: np.ndarray) -> np.ndarray:
    """float32 luma of a uint8 (H, W, 3) frame, or the (H, W) grey frame as float32."""
    rgb = np.asarray(frame)
    return rgb.astype(np.float32) @ _LUMA if rgb.ndim == 3 else rgb.astype(np.float32)


def frame_stats(frame: np.ndarray) -> tuple[float, float, float]:
    """(brightness, contrast, sharpness) of a uint8 (H, W, 3) frame, or (H, W) grey frame."""
    return luma_stats(luma_of(frame))


def luma_stats(luma: np.ndarray) -> tuple[float, float, float]:
    """(brightness, contrast, sharpness) of a float32 luma frame."""
    brightness = float(luma.mean())
    contrast = float(luma.std())
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return brightness, contrast, 0.0
    lap = (luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:]) - 4.0 * luma[1:-1, 1:-1]
    return brightness, contrast, float(lap.var())


FLAT_CONTRAST = 4.0
"""Below this contrast (luma standard deviation, grey levels) a frame is flat: what varies between its
pixels is compression or sensor noise, not content, so pixel_correlation calls it 1.0 (not static)."""


def neighbour_correlations(luma: np.ndarray) -> tuple[float, ...]:
    """Autocorrelation of luma at lags 1..MAX_CORRELATION_LAG pixels (the smaller of horizontal and
    vertical, normalised by the frame's variance, clipped to [-1, 1]); all 1.0 for a flat frame (contrast
    below FLAT_CONTRAST), which is not noise (the black/blurred filters judge it)."""
    y = luma - np.float32(luma.mean())
    height, width = y.shape
    var = float(np.einsum("ij,ij->", y, y)) / y.size
    lags = range(1, MAX_CORRELATION_LAG + 1)
    if var < FLAT_CONTRAST**2:
        return tuple(1.0 for _ in lags)
    out = []
    for lag in lags:
        across = float(np.einsum("ij,ij->", y[:, :-lag], y[:, lag:])) / max(height * (width - lag), 1)
        down = float(np.einsum("ij,ij->", y[:-lag], y[lag:])) / max((height - lag) * width, 1)
        out.append(max(-1.0, min(1.0, min(across, down) / var)))
    return tuple(out)


def correlation_lag(size: int, width: int | None, height: int | None) -> int:
    """The lag of pixel_correlation for a source of width x height shown at size x size: 1 unless the
    source's short side is smaller (upscaled), then the upscale factor rounded up, at most
    MAX_CORRELATION_LAG."""
    if not width or not height or min(width, height) >= size:
        return 1
    return min(MAX_CORRELATION_LAG, max(1, math.ceil(size / min(width, height) - 1e-9)))


def pixel_correlation(correlations: tuple[float, ...], size: int, width: int | None, height: int | None) -> float:
    """The pixel_correlation of a frame from its neighbour_correlations and the source's resolution."""
    return correlations[correlation_lag(size, width, height) - 1]


@dataclass
class FrameStatsRecorder:
    """Wraps a frame iterable and records each frame's statistics as it passes (to the embedder). The
    neighbour correlations wait for the source's resolution (a video's is known only after its decode):
    pixel_correlation() picks the lag when the table is built."""

    brightness: list[float] = field(default_factory=list)
    contrast: list[float] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    correlations: list[tuple[float, ...]] = field(default_factory=list)

    def wrap(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for frame in frames:
            luma = luma_of(frame)
            b, c, s = luma_stats(luma)
            self.brightness.append(b)
            self.contrast.append(c)
            self.sharpness.append(s)
            self.correlations.append(neighbour_correlations(luma))
            yield frame


FRAME_STAT_COLUMNS = ("brightness", "pixel_correlation")
"""One column per generation of frame statistics: brightness (with contrast, sharpness), pixel_correlation."""


def lacks_metadata(df: pl.DataFrame) -> bool:
    """True for a non-empty embeddings table written before (some of) the built-in metadata existed (as
    read by the store: a frame statistic null for every row; the embedding pass computes each for every
    sample it embeds)."""
    return df.height > 0 and any(c not in df.columns or df[c].null_count() == df.height for c in FRAME_STAT_COLUMNS)


USER_PREFIX = "user:"
"""Columns of the user metadata table joined onto the candidates are named user:<key> (workflow/user_metadata.py)."""


def user_column(key: str) -> str:
    return USER_PREFIX + key


def column_values(df: pl.DataFrame, key: str) -> np.ndarray:
    """The key's values as float64 (NaN for null): a built-in key's column, else the user table's column."""
    column = BUILTIN_COLUMNS.get(key, user_column(key))
    if column not in df.columns:
        return np.full(df.height, np.nan)
    return df[column].cast(pl.Float64).fill_null(float("nan")).to_numpy().astype(np.float64)


def passes(values: np.ndarray, threshold: float, operation: str) -> np.ndarray:
    """Which values pass `value <operation> threshold`; NaN (unknown) never passes."""
    v = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore"):
        if operation == "BIGGER":
            ok = v > threshold
        elif operation == "BIGGER_EQUAL":
            ok = v >= threshold
        elif operation == "SMALLER":
            ok = v < threshold
        elif operation == "SMALLER_EQUAL":
            ok = v <= threshold
        else:
            raise ValueError(f"operation must be one of {', '.join(OPERATIONS)}, not {operation!r}")
    return ok & ~np.isnan(v)


def weight_scores(values: np.ndarray) -> np.ndarray:
    """Values min-max normalised to [0, 1] (1: the highest); NaN -> 0; all equal -> all 1."""
    v = np.asarray(values, np.float64)
    known = ~np.isnan(v)
    out = np.zeros(len(v), np.float64)
    if not known.any():
        return out
    lo, hi = float(v[known].min()), float(v[known].max())
    out[known] = 1.0 if hi <= lo else (v[known] - lo) / (hi - lo)
    return out


def degenerate_frames(df: pl.DataFrame, rules: FilterSpec) -> tuple[np.ndarray, dict[str, int], int]:
    """datasets.yaml `filters` on the built-in metadata: which rows to drop, the count per enabled reason
    (the first that applies, in the order black, blurred, noise) and how many rows lack a checked value
    (those are kept)."""
    checks = [("black", rules.drop_black, "brightness", rules.black_max_brightness),
              ("blurred", rules.drop_blurred, "sharpness", rules.blurred_max_sharpness),
              ("noise", rules.drop_noise, "pixel_correlation", rules.noise_max_correlation)]
    drop = np.zeros(df.height, bool)
    missing = np.zeros(df.height, bool)
    counts: dict[str, int] = {}
    for reason, on, key, limit in checks:
        if on:
            values = column_values(df, key)
            hit = passes(values, limit, "SMALLER_EQUAL") & ~drop
            counts[reason] = int(hit.sum())
            drop |= hit
            missing |= np.isnan(values)
    return drop, counts, int(missing.sum())


@dataclass
class ThresholdOutcome:
    """What one THRESHOLD entry did: how many candidates it removed (of those left before it)."""

    key: str
    operation: str
    threshold: float
    removed: int
    unknown: int
    """Of the removed: candidates without a value (null: e.g. a shard embedded before the metadata existed)."""

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def apply_thresholds(
    candidates: pl.DataFrame, selection: SelectionConfig
) -> tuple[pl.DataFrame, list[ThresholdOutcome]]:
    """Keep only the candidates that pass every THRESHOLD entry (in config order)."""
    outcomes: list[ThresholdOutcome] = []
    for entry in selection.metadata_entries("THRESHOLD"):
        key, setting = str(entry.input.key), entry.strategy
        assert setting.threshold is not None and setting.operation is not None
        values = column_values(candidates, key)
        keep = passes(values, setting.threshold, setting.operation)
        outcomes.append(ThresholdOutcome(key, setting.operation, setting.threshold, int((~keep).sum()),
                                         int(np.isnan(values).sum())))
        candidates = candidates.filter(pl.Series(keep))
    return candidates, outcomes


def weights_bonus(candidates: pl.DataFrame, selection: SelectionConfig) -> np.ndarray | None:
    """Sum over WEIGHTS entries of strength * weight_scores(values of the key); None without WEIGHTS."""
    entries = selection.metadata_entries("WEIGHTS")
    if not entries:
        return None
    bonus = np.zeros(candidates.height, np.float64)
    for entry in entries:
        bonus += entry.strategy.strength * weight_scores(column_values(candidates, str(entry.input.key)))
    return bonus


def missing_metadata_keys(candidates: pl.DataFrame, selection: SelectionConfig) -> list[str]:
    """METADATA keys of the config whose values are unknown (null) for every candidate."""
    keys = [str(e.input.key) for e in selection.strategies
            if e.input.key is not None and e.strategy.type in ("WEIGHTS", "THRESHOLD")]
    return [k for k in dict.fromkeys(keys) if candidates.height and np.isnan(column_values(candidates, k)).all()]
