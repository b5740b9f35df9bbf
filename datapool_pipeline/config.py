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


class StrategyInput(StrictModel):
    type: Literal["EMBEDDINGS"] = Field(default="EMBEDDINGS", description="What the strategy looks at: EMBEDDINGS.")


STRATEGY_TYPES = ("DIVERSITY", "TYPICALITY")


class Strategy(StrictModel):
    type: Literal["DIVERSITY", "TYPICALITY"] = Field(
        default="DIVERSITY",
        description="DIVERSITY: greedy k-center given the datapool (required, exactly once: it drives the "
        "greedy selection). TYPICALITY: prefer samples in dense regions of the new data (avoids outliers).",
    )
    stopping_condition_minimum_distance: float | None = Field(
        default=None,
        ge=0,
        description="DIVERSITY only: stop selecting once the farthest remaining candidate is closer than this "
        "(Euclidean distance of unit embeddings, 0..2) to the datapool and the picks so far.",
    )
    strength: float = Field(
        default=1.0,
        gt=0,
        description="Weight of this strategy's normalised objective in the combined greedy score.",
    )

    @model_validator(mode="after")
    def _minimum_distance_is_for_diversity(self) -> Strategy:
        if self.type != "DIVERSITY" and self.stopping_condition_minimum_distance is not None:
            raise ValueError(
                f"stopping_condition_minimum_distance: only DIVERSITY takes it, not {self.type}"
            )
        return self


class StrategyEntry(StrictModel):
    input: StrategyInput = Field(default=StrategyInput(), description="The strategy's input.")
    strategy: Strategy = Field(default=Strategy(), description="The strategy and its settings.")


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
        "optionally EMBEDDINGS + TYPICALITY.",
    )

    @field_validator("strategies")
    @classmethod
    def _diversity_drives(cls, entries: tuple[StrategyEntry, ...]) -> tuple[StrategyEntry, ...]:
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            kind = entry.strategy.type
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
