"""The run config (the vendor's worker_config / selection_config shape): one typed schema.

The same models validate `datapool run --config`, sensors' run config in datasets.yaml and the Dagster
launchpad (assets/run_config.py derives its Dagster Config classes from them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from datapool_pipeline.errors import ConfigError
from datapool_pipeline.schema import StrictModel, validate


class DatasourceConfig(StrictModel):
    process_all: bool = Field(
        default=False,
        description="Consider every raw file in the input again, not only files new since the last run. "
        "Samples already in the datapool are never added twice.",
    )


class WorkerConfig(StrictModel):
    use_datapool: bool = Field(
        default=False,
        description="Grow the existing datapool, selecting what is most different from it. When false the "
        "dataset must still be empty, otherwise the run aborts.",
    )
    datasource: DatasourceConfig = Field(default=DatasourceConfig(), description="Which raw files to consider.")
    enable_training: bool = Field(default=False, description="Accepted for vendor configs; must be false.")

    @field_validator("enable_training")
    @classmethod
    def _no_training(cls, value: bool) -> bool:
        if value:
            raise ValueError("training is not supported; remove it or set false")
        return value


# Built-in metadata keys (computed per sample in the embedding pass; see selection/metadata.py).
BUILTIN_METADATA_KEYS = ("brightness", "contrast", "sharpness", "pixel_correlation", "timestamp", "duration", "width",
                         "height", "file_size")
METADATA_STRATEGY_TYPES = ("WEIGHTS", "THRESHOLD", "BALANCE")
# Inputs of the METADATA family: values per sample, by key. METADATA: a built-in key or a column of the
# dataset's user table (datasets.yaml `metadata: {file: ...}`); SCORES and PREDICTIONS: a column of that table.
TABLE_INPUT_TYPES = ("METADATA", "SCORES", "PREDICTIONS")
# Which inputs each METADATA-family strategy takes.
METADATA_STRATEGY_INPUTS = {
    "WEIGHTS": ("METADATA", "SCORES"),
    "THRESHOLD": ("METADATA", "SCORES"),
    "BALANCE": ("METADATA", "PREDICTIONS"),
}
# Columns of the user table that identify a sample; no key may be one of them.
TABLE_ID_COLUMNS = ("raw_key", "frame_index")


def _check_metadata_key(kind: str, key: str | None) -> None:
    allowed = ", ".join(BUILTIN_METADATA_KEYS)
    if kind in TABLE_INPUT_TYPES and (key is None or not key.strip()):
        hint = f"one of the built-in keys {allowed}, or " if kind == "METADATA" else ""
        raise ValueError(f"key: {kind} needs a key, {hint}a column of the dataset's metadata table")
    if kind in ("SCORES", "PREDICTIONS") and key in BUILTIN_METADATA_KEYS:
        raise ValueError(
            f"key: {key!r} is a built-in metadata key, not a column of the metadata table: use input.type "
            "METADATA for it, and name table columns apart from the built-in keys"
        )
    if key in TABLE_ID_COLUMNS:
        raise ValueError(f"key: {key!r} identifies the samples of the metadata table; name a value column")
    if kind not in TABLE_INPUT_TYPES and key is not None:
        raise ValueError(f"key: only a METADATA, SCORES or PREDICTIONS input takes a key, not {kind}")


class StrategyInput(StrictModel):
    type: Literal["EMBEDDINGS", "METADATA", "SCORES", "PREDICTIONS"] = Field(
        default="EMBEDDINGS",
        description="What the strategy looks at: EMBEDDINGS; METADATA (by key: a built-in per-sample value or a "
        "column of the dataset's metadata table; for WEIGHTS, THRESHOLD, BALANCE); SCORES (a numeric column of "
        "the metadata table; WEIGHTS, THRESHOLD); PREDICTIONS (a categorical column; BALANCE).",
    )
    key: str | None = Field(
        default=None,
        description="METADATA, SCORES, PREDICTIONS: the built-in key (" + ", ".join(BUILTIN_METADATA_KEYS)
        + "; METADATA only) or a column of the dataset's metadata table (datasets.yaml metadata.file).",
    )

    @model_validator(mode="after")
    def _metadata_key(self) -> StrategyInput:
        _check_metadata_key(self.type, self.key)
        return self

    @property
    def is_builtin(self) -> bool:
        """A METADATA input on a built-in key (computed by the embedding pass, not read from the table)."""
        return self.type == "METADATA" and self.key in BUILTIN_METADATA_KEYS

    text: tuple[str, ...] | None = Field(
        default=None,
        strict=False,  # a YAML/JSON list becomes the tuple
        description="SIMILARITY only: text prompts, encoded by the dataset's open_clip text tower (e.g. "
        "'a dark street at night'). Exactly one of text / keys.",
    )
    keys: tuple[str, ...] | None = Field(
        default=None,
        strict=False,
        description="SIMILARITY only: keys of query images in the input datasource, embedded like any image. "
        "Exactly one of text / keys.",
    )

    @field_validator("text", "keys")
    @classmethod
    def _non_empty_queries(cls, values: tuple[str, ...] | None, info: Any) -> tuple[str, ...] | None:
        if values is None:
            return values
        if not values:
            raise ValueError(f"give at least one query, or leave {info.field_name} out")
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"[{i}]: must be a non-empty string, got {value!r}")
        return values


STRATEGY_TYPES = ("DIVERSITY", "TYPICALITY", "SIMILARITY")


class Strategy(StrictModel):
    type: Literal["DIVERSITY", "TYPICALITY", "SIMILARITY", "WEIGHTS", "THRESHOLD", "BALANCE"] = Field(
        default="DIVERSITY",
        description="DIVERSITY: greedy k-center given the datapool (required, exactly once: it drives the "
        "greedy selection). TYPICALITY: prefer samples in dense regions of the new data (avoids outliers). "
        "SIMILARITY: prefer samples close to query embeddings (input.text prompts or input.keys images). "
        "WEIGHTS (METADATA input): prefer samples with high values of the key. THRESHOLD (METADATA input): keep "
        "only samples whose value passes threshold/operation. BALANCE (METADATA or PREDICTIONS input, a "
        "categorical column of the metadata table): prefer samples whose category is furthest under its target "
        "share, counting the datapool's samples too.",
    )
    stopping_condition_minimum_distance: float | None = Field(
        default=None,
        ge=0,
        description="DIVERSITY only: stop selecting once the farthest remaining candidate is closer than this "
        "(Euclidean distance of unit embeddings, 0..2) to the datapool and the picks so far.",
    )
    datapool_margin: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="DIVERSITY only: a new sample must also be at least stopping_condition_minimum_distance + "
        "this far from every datapool sample to be picked (from this run's own picks, the minimum distance is "
        "enough). Unset (0) is the vendor's rule. Set it to about the largest distance a re-encoded or "
        "re-recorded copy of a frame moves in your model's space, so that runs on footage that copies "
        "what the datapool already covers add nothing, run after run.",
    )
    strength: float = Field(
        default=1.0,
        gt=0,
        description="Weight of this strategy's normalised objective in the combined greedy score.",
    )

    threshold: float | None = Field(
        default=None,
        description="THRESHOLD only (required): the value the METADATA key is compared with.",
    )
    operation: Literal["BIGGER", "BIGGER_EQUAL", "SMALLER", "SMALLER_EQUAL"] | None = Field(
        default=None,
        description="THRESHOLD only (required): keep samples whose value is BIGGER, BIGGER_EQUAL, SMALLER or "
        "SMALLER_EQUAL than threshold.",
    )

    target: dict[str, float] | None = Field(
        default=None,
        description="BALANCE only (required): the target share (0..1, summing to at most 1) of each category of "
        "the key, e.g. {sunny: 0.5, rain: 0.5}, over the datapool and the picks together.",
    )

    @field_validator("target")
    @classmethod
    def _target_shares(cls, target: dict[str, float] | None) -> dict[str, float] | None:
        if target is None:
            return target
        if not target:
            raise ValueError("give at least one category and its target share, e.g. {day: 0.5, night: 0.5}")
        for category, share in target.items():
            if not category.strip():
                raise ValueError("a category must be a non-empty name")
            if not 0 <= share <= 1:
                raise ValueError(f"{category}: a share is between 0 and 1, got {share!r}")
        total = sum(target.values())
        if total > 1 + 1e-6:
            raise ValueError(f"the shares sum to {total:g}; they must sum to at most 1")
        if total <= 0:
            raise ValueError("the shares sum to 0; give some category a positive share")
        return target

    @model_validator(mode="after")
    def _balance_target(self) -> Strategy:
        if self.type == "BALANCE" and self.target is None:
            raise ValueError("target: BALANCE needs target, the share of each category, e.g. {day: 0.5, night: 0.5}")
        if self.type != "BALANCE" and self.target is not None:
            raise ValueError(f"target: only BALANCE takes it, not {self.type}")
        return self

    @model_validator(mode="after")
    def _threshold_settings(self) -> Strategy:
        for name in ("threshold", "operation"):
            value = getattr(self, name)
            if self.type == "THRESHOLD" and value is None:
                hint = "BIGGER, BIGGER_EQUAL, SMALLER or SMALLER_EQUAL" if name == "operation" else "a number"
                raise ValueError(f"{name}: THRESHOLD needs {name} ({hint})")
            if self.type != "THRESHOLD" and value is not None:
                raise ValueError(f"{name}: only THRESHOLD takes it, not {self.type}")
        return self

    @model_validator(mode="after")
    def _minimum_distance_is_for_diversity(self) -> Strategy:
        if self.type != "DIVERSITY" and self.stopping_condition_minimum_distance is not None:
            raise ValueError(
                f"stopping_condition_minimum_distance: only DIVERSITY takes it, not {self.type}"
            )
        if self.type != "DIVERSITY" and self.datapool_margin is not None:
            raise ValueError(f"datapool_margin: only DIVERSITY takes it, not {self.type}")
        return self


class StrategyEntry(StrictModel):
    input: StrategyInput = Field(default=StrategyInput(), description="The strategy's input.")
    strategy: Strategy = Field(default=Strategy(), description="The strategy and its settings.")

    @model_validator(mode="after")
    def _metadata_input_fits(self) -> StrategyEntry:
        kind, given = self.strategy.type, self.input.type
        accepted = METADATA_STRATEGY_INPUTS.get(kind)
        if accepted is not None and given not in accepted:
            raise ValueError(f"input.type: {kind} needs a {' or '.join(accepted)} input with a key, not {given}")
        if given in TABLE_INPUT_TYPES and accepted is None:
            takers = [s for s, inputs in METADATA_STRATEGY_INPUTS.items() if given in inputs]
            names = ", ".join(takers[:-1]) + (" and " if len(takers) > 1 else "") + takers[-1]
            raise ValueError(f"input.type: {given} is an input of {names}, not of {kind}")
        if kind == "BALANCE" and self.input.is_builtin:
            raise ValueError(
                f"input.key: BALANCE needs a categorical column of the metadata table; {self.input.key} is a "
                "built-in numeric key"
            )
        return self

    @model_validator(mode="after")
    def _similarity_queries(self) -> StrategyEntry:
        given = [name for name in ("text", "keys") if getattr(self.input, name) is not None]
        if self.strategy.type != "SIMILARITY":
            if given:
                raise ValueError(f"input.{given[0]}: only SIMILARITY takes queries, not {self.strategy.type}")
            return self
        if not given:
            raise ValueError("input: SIMILARITY needs queries: set input.text (prompts) or input.keys (query images)")
        if len(given) > 1:
            raise ValueError("input.keys: set exactly one of input.text / input.keys, not both")
        return self


DEFAULT_STRATEGIES = (StrategyEntry(),)


class SelectionConfig(StrictModel):
    n_samples: int | None = Field(
        default=None,
        ge=1,
        description="How many new samples to add (counted over new data only). Exactly one of n_samples / "
        "proportion_samples.",
    )
    proportion_samples: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Fraction (0 < p <= 1) of the new samples to add, rounded down, at least one.",
    )
    strategies: tuple[StrategyEntry, ...] = Field(
        default=DEFAULT_STRATEGIES,
        min_length=1,
        strict=False,  # a YAML/JSON list becomes the tuple; each entry is still validated strictly
        description="Selection strategies, each {input, strategy}: EMBEDDINGS + DIVERSITY (required, once), "
        "optionally EMBEDDINGS + TYPICALITY, METADATA/SCORES (key) + WEIGHTS, METADATA/SCORES (key) + THRESHOLD, "
        "METADATA/PREDICTIONS (key) + BALANCE, EMBEDDINGS (text or keys) + SIMILARITY.",
    )
    relevant_filenames: tuple[str, ...] | None = Field(
        default=None,
        strict=False,
        description="Only these raw file keys (of the input datasource) are candidates of the run; other new "
        "files stay unprocessed for later runs.",
    )
    relevant_filenames_file: str | None = Field(
        default=None,
        description="Key of a text file in the input datasource listing the relevant raw file keys, one a "
        "line (like the vendor's relevant filenames file); restricts the run's candidates like "
        "relevant_filenames.",
    )

    @field_validator("relevant_filenames")
    @classmethod
    def _relevant_non_empty(cls, keys: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if keys is not None:
            if not keys:
                raise ValueError("give at least one raw file key, or leave relevant_filenames out")
            for i, key in enumerate(keys):
                if not key.strip():
                    raise ValueError(f"[{i}]: must be a non-empty key")
        return keys

    @field_validator("relevant_filenames_file")
    @classmethod
    def _relevant_file_named(cls, key: str | None) -> str | None:
        if key is not None and not key.strip():
            raise ValueError("must be the key of a file in the input datasource")
        return key

    def strategy_entry(self, kind: str) -> StrategyEntry | None:
        """The entry (input and settings) of this strategy type, or None when it is not configured."""
        return next((e for e in self.strategies if e.strategy.type == kind), None)

    @field_validator("strategies")
    @classmethod
    def _diversity_drives(cls, entries: tuple[StrategyEntry, ...]) -> tuple[StrategyEntry, ...]:
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            kind = entry.strategy.type
            if kind in METADATA_STRATEGY_TYPES:
                kind = f"{kind} on key {entry.input.key}"  # one per key: THRESHOLD on two keys is fine
            if kind in seen:
                raise ValueError(
                    f"[{i}].strategy.type: {kind} is given twice (also strategies[{seen[kind]}]); keep one"
                )
            seen[kind] = i
        if "DIVERSITY" not in seen:
            raise ValueError(
                "add an entry {input: {type: EMBEDDINGS}, strategy: {type: DIVERSITY}}: DIVERSITY drives the "
                "greedy selection and is required"
            )
        return entries

    def metadata_entries(self, kind: str) -> list[StrategyEntry]:
        """The entries of a METADATA-family strategy type (WEIGHTS, THRESHOLD, BALANCE), in config order."""
        return [e for e in self.strategies if e.strategy.type == kind]

    def strategy(self, kind: str) -> Strategy | None:
        """The settings of the entry of this strategy type, or None when it is not configured."""
        return next((e.strategy for e in self.strategies if e.strategy.type == kind), None)

    @model_validator(mode="after")
    def _exactly_one_amount(self) -> SelectionConfig:
        if self.n_samples is None and self.proportion_samples is None:
            raise ValueError("set exactly one of n_samples (a count) or proportion_samples (0 < p <= 1)")
        if self.n_samples is not None and self.proportion_samples is not None:
            raise ValueError("n_samples and proportion_samples are both set; keep exactly one of them")
        return self


class RunConfig(StrictModel):
    """One run's settings: what to consider (worker_config) and how much to select (selection_config)."""

    worker_config: WorkerConfig = Field(default=WorkerConfig(), description="Which data the run considers.")
    selection_config: SelectionConfig = Field(description="How many new samples to select, and how.")

    @property
    def use_datapool(self) -> bool:
        return self.worker_config.use_datapool

    @property
    def process_all(self) -> bool:
        return self.worker_config.datasource.process_all

    @property
    def n_samples(self) -> int | None:
        return self.selection_config.n_samples

    @property
    def proportion_samples(self) -> float | None:
        return self.selection_config.proportion_samples

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what run records and reports store), unset amounts left out."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"worker_config": {"enable_training"}})


def parse_run_config(raw: Any) -> RunConfig:
    """Validate a run config mapping; a ConfigError names the first wrong field."""
    if raw is None:
        raw = {}
    if isinstance(raw, dict) and "selection_config" not in raw:
        raw = {**raw, "selection_config": {}}  # say what selection_config lacks, not that it is missing
    return validate(RunConfig, raw, "run config" if not isinstance(raw, dict) else "")


def load_run_config_file(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"run config file {file} not found")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping with worker_config and selection_config")
    return raw or {}
