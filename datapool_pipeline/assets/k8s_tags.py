"""Kubernetes settings of the embedding step's pod, as the op tag `dagster-k8s/config`.

Under `k8s_job_executor` (DATAPOOL_EXECUTOR=k8s) every step runs in its own pod; dagster-k8s reads the op
tag `dagster-k8s/config` of the step to set that pod's resources and placement. Only the embedding step
needs more than the defaults (a model in memory, a GPU if there is one), so its settings come from the code
location's environment (the Helm values set them on the user code deployment, and launched runs inherit
that environment):

- DATAPOOL_EMBED_CPU: container requests.cpu (`4`, `3500m`)
- DATAPOOL_EMBED_MEMORY: container requests.memory and limits.memory (`16Gi`)
- DATAPOOL_EMBED_GPU: container limits `nvidia.com/gpu` (whole GPUs, `1`) and a toleration of the
  `nvidia.com/gpu` taint
- DATAPOOL_EMBED_NODE_SELECTOR: pod nodeSelector, `key=value` pairs separated by commas
  (`cloud.google.com/gke-accelerator=nvidia-l4`)

Unset or empty variables add nothing; with none set the tags are empty and the cluster's defaults apply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from datapool_pipeline.errors import ConfigError

K8S_CONFIG_TAG = "dagster-k8s/config"
CPU_ENV = "DATAPOOL_EMBED_CPU"
MEMORY_ENV = "DATAPOOL_EMBED_MEMORY"
GPU_ENV = "DATAPOOL_EMBED_GPU"
NODE_SELECTOR_ENV = "DATAPOOL_EMBED_NODE_SELECTOR"
GPU_RESOURCE = "nvidia.com/gpu"

# Kubernetes resource quantities: a decimal number with an optional SI / binary suffix.
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
# Label keys ([prefix/]name) and values.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _quantity(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not _QUANTITY.match(value):
        raise ConfigError(f"{name}={value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    return value


def _gpus(env: Mapping[str, str]) -> int:
    value = env.get(GPU_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ConfigError(f"{GPU_ENV}={value!r} must be a whole number of GPUs")
    return int(value)


def _node_selector(env: Mapping[str, str]) -> dict[str, str]:
    value = env.get(NODE_SELECTOR_ENV, "").strip()
    selector: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        key, sep, label = (s.strip() for s in pair.partition("="))
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(label):
            raise ConfigError(f"{NODE_SELECTOR_ENV}: {pair!r} is not a label key=value pair")
        selector[key] = label
    return selector


def embed_step_k8s_tags(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """Op tags for the `embeddings` asset: `{"dagster-k8s/config": {...}}`, or `{}` when no variable is set.

    `env` defaults to os.environ. Raises ConfigError on a malformed value, so a typo fails the code
    location's load instead of silently scheduling the step without its GPU.
    """
    env = os.environ if env is None else env
    cpu, memory, gpus = _quantity(env, CPU_ENV), _quantity(env, MEMORY_ENV), _gpus(env)
    selector = _node_selector(env)

    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
        limits["memory"] = memory
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)

    config: dict[str, object] = {}
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    if resources:
        config["container_config"] = {"resources": resources}
    pod_spec: dict[str, object] = {}
    if selector:
        pod_spec["node_selector"] = selector
    if gpus:
        pod_spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return {K8S_CONFIG_TAG: config} if config else {}
