"""The dataset's user metadata / scores / predictions table (datasets.yaml `metadata: {file: ...}`), read
through the input storage at selection time, and the BALANCE strategy's terms and summary on it.

The table has a `raw_key` column (the raw file's key as in sample ids: `<name>:<key>` for a named input)
and, for videos, optionally `frame_index` (without it, or where it is null, a row applies to every frame of
the file); every other column is a key that METADATA, SCORES and PREDICTIONS inputs may name. A column named
like a built-in metadata key, a missing file or column, or a column of the wrong type is a one-line
ConfigError naming the field and the file, raised before any selection work.

BALANCE counts the datapool: the pool samples' raw keys (and frame indices) are looked up in the same table;
pool samples and candidates without a row (or with a null value) count in no category.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from datapool_pipeline.config import BUILTIN_METADATA_KEYS, SelectionConfig, StrategyEntry
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.selection.metadata import user_column
from datapool_pipeline.selection.strategies import BalanceTerm
from datapool_pipeline.storage import Storage

_NUMERIC_KINDS = ("WEIGHTS", "THRESHOLD")


@dataclass
class UserTable:
    file: str
    frame: pl.DataFrame
    """raw_key, optionally frame_index, and the columns the config uses (as read)."""

    @property
    def by_frame(self) -> bool:
        return "frame_index" in self.frame.columns

    def attach(self, samples: pl.DataFrame) -> pl.DataFrame:
        """`samples` (raw_key, frame_index, ...) with each used column added as user_column(key) (null where
        the table has no row), in the same row order."""
        on = ["raw_key", "frame_index"] if self.by_frame else ["raw_key"]
        values = self.frame.rename({c: user_column(c) for c in self.frame.columns if c not in on})
        columns = [c for c in values.columns if c not in on]
        if samples.height == 0:
            return samples.with_columns(*[pl.lit(None, dtype=values[c].dtype).alias(c) for c in columns])
        if not self.by_frame:
            return samples.join(values, on=on, how="left", maintain_order="left")
        # Rows with frame_index null apply to every frame of their file (e.g. images next to video frames).
        per_frame = values.filter(pl.col("frame_index").is_not_null())
        per_file = values.filter(pl.col("frame_index").is_null()).drop("frame_index")
        out = samples.join(per_frame, on=on, how="left", maintain_order="left")
        if per_file.height == 0:
            return out
        fallback = per_file.rename({c: f"{c}\0file" for c in columns})
        out = out.join(fallback, on="raw_key", how="left", maintain_order="left")
        return out.with_columns(*[pl.coalesce(c, f"{c}\0file").alias(c) for c in columns]).drop(
            [f"{c}\0file" for c in columns])


def _entries(selection: SelectionConfig) -> list[tuple[int, StrategyEntry]]:
    return [(i, e) for i, e in enumerate(selection.strategies)
            if e.input.key is not None and e.input.type in ("METADATA", "SCORES", "PREDICTIONS")
            and not e.input.is_builtin]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_user_table(spec: DatasetSpec, selection: SelectionConfig, input_storage: Storage | None) -> UserTable | None:
    """The table with the columns the config's strategies read, checked; None when no strategy reads it."""
    entries = _entries(selection)
    if not entries:
        return None
    if spec.metadata is None:
        i, entry = entries[0]
        raise ConfigError(
            f"selection_config.strategies[{i}].input.key: {entry.input.key!r} is not a built-in metadata key and "
            f"dataset {spec.name} has no metadata table: add `metadata: {{file: <key of a .parquet/.csv/.jsonl "
            f"table in the input>}}` to datasets.{spec.name} in datasets.yaml"
        )
    if input_storage is None:
        raise ValueError("the metadata table is read through the input storage: pass input_storage")
    file = spec.metadata.file
    where = f"datasets.{spec.name}.metadata.file: {file}"
    if not input_storage.exists(file):
        raise ConfigError(f"{where} is not in the input datasource {input_storage.display()}")
    data = input_storage.read_bytes(file)
    try:
        fmt = spec.metadata.format
        if fmt == "parquet":
            frame = pl.read_parquet(io.BytesIO(data))
        elif fmt == "csv":
            frame = pl.read_csv(io.BytesIO(data), schema_overrides={"raw_key": pl.String})
        else:
            frame = pl.read_ndjson(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise ConfigError(f"{where} is not a readable {spec.metadata.format} table ({_one_line(exc)})") from None
    columns = frame.columns
    if "raw_key" not in columns:
        raise ConfigError(f"{where} has no raw_key column (the raw file key of each row); its columns: "
                          f"{', '.join(columns) or 'none'}")
    if frame.schema["raw_key"] != pl.String:
        raise ConfigError(f"{where}: column raw_key holds {frame.schema['raw_key']}, not strings (raw file keys)")
    if "frame_index" in columns and not frame.schema["frame_index"].is_integer():
        raise ConfigError(f"{where}: column frame_index holds {frame.schema['frame_index']}, not integers")
    clash = [c for c in columns if c in BUILTIN_METADATA_KEYS]
    if clash:
        raise ConfigError(f"{where}: column {clash[0]} clashes with the built-in metadata key {clash[0]}; rename "
                          "the column (table keys must differ from the built-in keys)")
    on = ["raw_key", "frame_index"] if "frame_index" in columns else ["raw_key"]
    if "frame_index" in columns:
        frame = frame.with_columns(pl.col("frame_index").cast(pl.Int64))
    if frame.select(on).is_duplicated().any():
        first = frame.filter(frame.select(on).is_duplicated())["raw_key"][0]
        raise ConfigError(f"{where} has more than one row for {'/'.join(on)} of {first}; keep one row per sample")
    for i, entry in entries:
        key, kind = str(entry.input.key), entry.strategy.type
        field = f"selection_config.strategies[{i}].input.key"
        if key not in columns:
            others = [c for c in columns if c not in on]
            raise ConfigError(f"{field}: column {key!r} is not in {file} (its value columns: "
                              f"{', '.join(others) or 'none'})")
        dtype = frame.schema[key]
        if kind in _NUMERIC_KINDS and not (dtype.is_numeric() or dtype == pl.Null):
            raise ConfigError(f"{field}: column {key!r} of {file} holds {dtype}, but {kind} needs numbers")
        if kind == "BALANCE" and (dtype.is_float() or not (dtype.is_integer() or dtype in (
                pl.String, pl.Boolean, pl.Categorical, pl.Null) or isinstance(dtype, pl.Enum))):
            raise ConfigError(f"{field}: column {key!r} of {file} holds {dtype}, but BALANCE needs categories "
                              "(strings, integers or booleans)")
    used = list(dict.fromkeys(str(e.input.key) for _, e in entries))
    casts = [pl.col(k).cast(pl.String) for _, e in entries if e.strategy.type == "BALANCE"
             for k in [str(e.input.key)]]
    frame = frame.select([*on, *used]).with_columns(casts) if casts else frame.select([*on, *used])
    return UserTable(file, frame)


def balance_terms(
    selection: SelectionConfig, candidates: pl.DataFrame, pool_samples: pl.DataFrame, table: UserTable | None
) -> list[BalanceTerm]:
    """One BalanceTerm per BALANCE entry: the candidates' categories (from user columns already attached to
    `candidates`) and the datapool's counts (its samples' raw keys looked up in the table)."""
    entries = selection.metadata_entries("BALANCE")
    if not entries:
        return []
    assert table is not None, "BALANCE reads the metadata table"
    pool = table.attach(pool_samples.select(["raw_key", "frame_index"]))
    terms = []
    for entry in entries:
        key, target = str(entry.input.key), dict(entry.strategy.target or {})
        column = user_column(key)
        cand = candidates[column].cast(pl.String).to_list()
        pooled = pool[column].cast(pl.String).to_list()
        seen = [v for v in dict.fromkeys([*pooled, *cand]) if v is not None and v not in target]
        categories = [*target, *sorted(seen)]
        position = {c: j for j, c in enumerate(categories)}
        codes = np.array([position.get(v, -1) if v is not None else -1 for v in cand], np.int64)
        counts = np.zeros(len(categories), np.int64)
        for v in pooled:
            if v is not None:
                counts[position[v]] += 1
        shares = np.array([target.get(c, 0.0) for c in categories], np.float64)
        terms.append(BalanceTerm(key, categories, codes, shares, counts, entry.strategy.strength, len(target)))
    return terms


def balance_summary(term: BalanceTerm, picks: list[int]) -> dict[str, Any]:
    """What BALANCE did: per category the target share, the datapool's count and share before the run, the
    picks' count and the achieved share over the datapool and the picks."""
    picked = np.zeros(len(term.categories), np.int64)
    for i in picks:
        if term.codes[i] >= 0:
            picked[term.codes[i]] += 1
    after = term.pool_counts + picked
    total_before, total_after = int(term.pool_counts.sum()), int(after.sum())

    def share(n: int, total: int) -> float:
        return round(n / total, 4) if total else 0.0

    listed = zip(term.categories[: term.listed], term.target[: term.listed].tolist(), strict=True)
    achieved = {c: share(int(n), total_after) for c, n in zip(term.categories, after, strict=True)}
    return {
        "key": term.key,
        "short": ", ".join(f"{c} {achieved[c]:.0%} (target {t:.0%})" for c, t in listed),
        "strength": term.strength,
        "target": dict(zip(term.categories[: term.listed], term.target[: term.listed].tolist(), strict=True)),
        "pool": {c: int(n) for c, n in zip(term.categories, term.pool_counts, strict=True)},
        "picks": {c: int(n) for c, n in zip(term.categories, picked, strict=True)},
        "before": {c: share(int(n), total_before) for c, n in zip(term.categories, term.pool_counts, strict=True)},
        "achieved": achieved,
        "picks_without_value": int(sum(1 for i in picks if term.codes[i] < 0)),
    }


def balance_line(summary: dict[str, Any]) -> str:
    """One log line of balance_summary."""
    parts = ", ".join(f"{c} {summary['achieved'][c]:.0%} (target {t:.0%}, was {summary['before'][c]:.0%})"
                      for c, t in summary["target"].items())
    return f"BALANCE {summary['key']}: datapool + picks now {parts}; picks by category {summary['picks']}"
