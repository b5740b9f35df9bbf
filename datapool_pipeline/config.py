"""Run config (Lightly-shaped worker_config / selection_config): parsing and validation.

The same mapping is accepted by the Dagster launchpad, sensors and `datapool run --config`.
Every error names the offending field and how to fix it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from datapool_pipeline.errors import ConfigError

SUPPORTED_STRATEGIES = (("EMBEDDINGS", "DIVERSITY"),)
DEFAULT_STRATEGIES: list[dict[str, Any]] = [{"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}]


@dataclass(frozen=True)
class RunConfig:
    use_datapool: bool = False
    process_all: bool = False
    n_samples: int | None = None
    proportion_samples: float | None = None

    def to_dict(self) -> dict[str, Any]:
        selection: dict[str, Any] = {"strategies": DEFAULT_STRATEGIES}
        if self.n_samples is not None:
            selection["n_samples"] = self.n_samples
        if self.proportion_samples is not None:
            selection["proportion_samples"] = self.proportion_samples
        return {
            "worker_config": {"use_datapool": self.use_datapool, "datasource": {"process_all": self.process_all}},
            "selection_config": selection,
        }


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _unknown(value: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(value) - allowed
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(allowed)}")


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: must be true or false, got {value!r}")
    return value


def parse_run_config(raw: Any) -> RunConfig:
    """Validate a run config mapping (missing sections take their defaults)."""
    top = _mapping(raw, "run config")
    _unknown(top, {"worker_config", "selection_config"}, "run config")
    worker = _mapping(top.get("worker_config"), "worker_config")
    _unknown(worker, {"use_datapool", "datasource", "enable_training"}, "worker_config")
    if worker.get("enable_training", False) is not False:
        raise ConfigError("worker_config.enable_training: training is not supported; remove it or set false")
    datasource = _mapping(worker.get("datasource"), "worker_config.datasource")
    _unknown(datasource, {"process_all"}, "worker_config.datasource")
    use_datapool = _bool(worker.get("use_datapool", False), "worker_config.use_datapool")
    process_all = _bool(datasource.get("process_all", False), "worker_config.datasource.process_all")

    selection = _mapping(top.get("selection_config"), "selection_config")
    _unknown(selection, {"n_samples", "proportion_samples", "strategies"}, "selection_config")
    n_samples = selection.get("n_samples")
    proportion = selection.get("proportion_samples")
    if n_samples is None and proportion is None:
        raise ConfigError(
            "selection_config: set exactly one of n_samples (a count) or proportion_samples (0 < p <= 1)"
        )
    if n_samples is not None and proportion is not None:
        raise ConfigError(
            "selection_config: n_samples and proportion_samples are both set; keep exactly one of them"
        )
    if n_samples is not None and (not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1):
        raise ConfigError(f"selection_config.n_samples: must be a positive integer, got {n_samples!r}")
    if proportion is not None:
        if isinstance(proportion, bool) or not isinstance(proportion, (int, float)) or not 0 < proportion <= 1:
            raise ConfigError(
                f"selection_config.proportion_samples: must be a number with 0 < p <= 1, got {proportion!r}"
            )
        proportion = float(proportion)
    _check_strategies(selection.get("strategies", DEFAULT_STRATEGIES))
    return RunConfig(
        use_datapool=use_datapool, process_all=process_all, n_samples=n_samples, proportion_samples=proportion
    )


def _check_strategies(strategies: Any) -> None:
    where = "selection_config.strategies"
    if not isinstance(strategies, list) or not strategies:
        raise ConfigError(f"{where}: expected a non-empty list of {{input: {{type}}, strategy: {{type}}}}")
    for i, item in enumerate(strategies):
        entry = _mapping(item, f"{where}[{i}]")
        _unknown(entry, {"input", "strategy"}, f"{where}[{i}]")
        input_body = _mapping(entry.get("input"), f"{where}[{i}].input")
        strategy_body = _mapping(entry.get("strategy"), f"{where}[{i}].strategy")
        for name, body in (("input", input_body), ("strategy", strategy_body)):
            extra = sorted(set(body) - {"type"})
            if extra:
                raise ConfigError(
                    f"{where}[{i}].{name}.{extra[0]}: not supported yet (only {name}.type is); remove it"
                )
        input_type = str(input_body.get("type", "")).upper()
        strategy_type = str(strategy_body.get("type", "")).upper()
        if (input_type, strategy_type) not in SUPPORTED_STRATEGIES:
            raise ConfigError(
                f"{where}[{i}]: input.type {input_type or '?'} with strategy.type {strategy_type or '?'} is not "
                "supported; use input.type EMBEDDINGS with strategy.type DIVERSITY"
            )


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
