"""The run config as Dagster Config classes, so the launchpad shows defaults and descriptions."""

from __future__ import annotations

from enum import Enum

import dagster as dg
from pydantic import Field

from datapool_pipeline.config import RunConfig, parse_run_config


class DatasourceConfig(dg.Config):
    process_all: bool = Field(
        default=False,
        description="Consider every raw file in the input again, not only files new since the last run. "
        "Samples already in the datapool are never added twice.",
    )


class WorkerConfig(dg.Config):
    use_datapool: bool = Field(
        default=False,
        description="Grow the existing datapool, selecting what is most different from it. When false "
        "the dataset must still be empty, otherwise the run aborts.",
    )
    datasource: DatasourceConfig = Field(default=DatasourceConfig(), description="Which raw files to consider.")


class InputType(str, Enum):
    EMBEDDINGS = "EMBEDDINGS"


class StrategyType(str, Enum):
    DIVERSITY = "DIVERSITY"


class StrategyInput(dg.Config):
    type: InputType = Field(default=InputType.EMBEDDINGS, description="What the strategy looks at: EMBEDDINGS.")


class StrategyKind(dg.Config):
    type: StrategyType = Field(
        default=StrategyType.DIVERSITY, description="DIVERSITY: greedy k-center given the datapool."
    )


class StrategyConfig(dg.Config):
    input: StrategyInput = Field(default=StrategyInput())
    strategy: StrategyKind = Field(default=StrategyKind())


class SelectionConfig(dg.Config):
    n_samples: int | None = Field(
        default=None,
        description="How many new samples to add (counted over new data only). Exactly one of "
        "n_samples / proportion_samples.",
    )
    proportion_samples: float | None = Field(
        default=None,
        description="Fraction (0 < p <= 1) of the new samples to add, rounded down, at least one.",
    )
    strategies: list[StrategyConfig] = Field(
        default=[{"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}],
        description="Selection strategies; EMBEDDINGS + DIVERSITY."
    )


class DatapoolRunConfig(dg.Config):
    """worker_config / selection_config: the same keys as `datapool run --config run.yaml`."""

    worker_config: WorkerConfig = Field(default=WorkerConfig())
    selection_config: SelectionConfig = Field(default=SelectionConfig())

    def parsed(self) -> RunConfig:
        raw = self.model_dump(mode="json", warnings=False)
        selection = {k: v for k, v in raw["selection_config"].items() if v is not None}
        return parse_run_config({"worker_config": raw["worker_config"], "selection_config": selection})


def op_run_config(raw_files_op: str, run_config: dict) -> dict:
    """Dagster run config that carries a worker_config / selection_config mapping to the job."""
    parse_run_config(run_config)  # raises ConfigError naming the field
    return {"ops": {raw_files_op: {"config": run_config}}}
