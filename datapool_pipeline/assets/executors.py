"""Executors chosen by environment variables of the code location (so a deployment picks them, not code)."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from datapool_pipeline.errors import ConfigError

BACKFILL_EXECUTOR_ENV = "DATAPOOL_EXECUTOR"
RUN_EXECUTOR_ENV = "DATAPOOL_RUN_EXECUTOR"
EXECUTORS = ("multiprocess", "in_process", "k8s")


def executor_from_env(variable: str, default: str) -> Any:
    """multiprocess: each step in its own process on this machine; in_process: one process (the model is
    loaded once); k8s: each step in its own Kubernetes pod (dagster-k8s's k8s_job_executor)."""
    choice = os.environ.get(variable, default).strip() or default
    if choice == "multiprocess":
        return dg.multiprocess_executor
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError:
            raise ConfigError(f"{variable}=k8s needs dagster-k8s: pip install 'datapool_pipeline[k8s]'") from None
        return k8s_job_executor
    raise ConfigError(f"{variable} must be one of {', '.join(EXECUTORS)}, got {choice!r}")
