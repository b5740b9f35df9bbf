"""The scale-out dagster.yaml variants in deploy/ are valid Dagster instance configs."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("variant", ["postgres", "k8s"])
def test_deploy_instance_config_is_valid(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_DB", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DATAPOOL_IMAGE"):
        monkeypatch.setenv(name, "value")
    config, _ = dagster_instance_config(str(DEPLOY / variant))  # raises on a schema error
    sections = [("storage", "dagster_postgres", "DagsterPostgresStorage", config["storage"]["postgres"])]
    for key in ("run_launcher", "run_coordinator"):
        if key in config:
            section = config[key]
            sections.append((key, section["module"], section["class"], section.get("config", {})))
    for key, module, cls_name, body in sections:
        cls = getattr(importlib.import_module(module.replace("dagster.core", "dagster._core")), cls_name)
        result = process_config(cls.config_type(), body)
        assert result.success, f"{variant}: {key}: {[e.message for e in result.errors or []]}"
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limits == [{"key": "datapool/dataset", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]


def test_k8s_executor_is_selectable(monkeypatch: pytest.MonkeyPatch) -> None:
    from datapool_pipeline.definitions import backfill_executor

    monkeypatch.setenv("DATAPOOL_EXECUTOR", "k8s")
    assert backfill_executor().name == "k8s"
    monkeypatch.setenv("DATAPOOL_EXECUTOR", "threads")
    from datapool_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="DATAPOOL_EXECUTOR must be one of multiprocess, in_process, k8s"):
        backfill_executor()
