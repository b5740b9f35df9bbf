"""deploy/: the scale-out dagster.yaml variants are valid Dagster instance configs; the image runs the code
server with the extras it needs; the Helm values fit the official chart; the embedding step's k8s tags parse."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
import yaml
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
    # The coordinator that puts the dataset tag on backfill runs, so the limit above holds them too.
    coordinator = {"module": "datapool_pipeline.assets.run_coordinator", "class": "DatapoolRunCoordinator"}
    assert {k: config["run_coordinator"][k] for k in coordinator} == coordinator


def test_k8s_executor_is_selectable(monkeypatch: pytest.MonkeyPatch) -> None:
    from datapool_pipeline.definitions import backfill_executor

    monkeypatch.setenv("DATAPOOL_EXECUTOR", "k8s")
    assert backfill_executor().name == "k8s"
    monkeypatch.setenv("DATAPOOL_EXECUTOR", "threads")
    from datapool_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="DATAPOOL_EXECUTOR must be one of multiprocess, in_process, k8s"):
        backfill_executor()


# ---- the image: Dockerfile, install script, extras ------------------------------------------------------------

ROOT = DEPLOY.parent


def dockerfile_cmd() -> list[str]:
    cmds = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert len(cmds) == 1
    return json.loads(cmds[0][4:])


def test_image_runs_the_code_server_not_dagster_dev() -> None:
    argv = dockerfile_cmd()
    assert argv[:3] == ["dagster", "code-server", "start"]
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert options == {"-h": "0.0.0.0", "-p": "4000", "-m": "datapool_pipeline.definitions"}


def test_image_installs_through_the_install_script_with_extras_that_exist() -> None:
    tomllib = pytest.importorskip("tomllib")
    text = (ROOT / "Dockerfile").read_text()
    assert "datapool-install.sh wheels" in text and "datapool-install.sh install" in text
    extras = re.search(r'^EXTRAS="([^"]+)"', (DEPLOY / "image" / "install.sh").read_text(), re.M)
    assert extras is not None
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in extras.group(1).split(","):
        assert extra in declared, f"install.sh installs the extra {extra!r} that pyproject.toml does not declare"
    assert any(r.startswith("dagster-postgres") for r in declared["postgres"])
    assert any(r.startswith("dagster-k8s") for r in declared["k8s"])


# ---- per-step Kubernetes settings of the embedding step -------------------------------------------------------


def test_embed_step_k8s_tags_are_empty_without_settings() -> None:
    from datapool_pipeline.assets.k8s_tags import embed_step_k8s_tags

    assert embed_step_k8s_tags({}) == {}
    assert embed_step_k8s_tags({"DATAPOOL_EMBED_CPU": " ", "DATAPOOL_EMBED_NODE_SELECTOR": ""}) == {}


def test_embed_step_k8s_tags_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_k8s.job import get_user_defined_k8s_config

    from datapool_pipeline.assets.k8s_tags import embed_step_k8s_tags

    for name, value in {
        "DATAPOOL_EMBED_CPU": "3500m",
        "DATAPOOL_EMBED_MEMORY": "16Gi",
        "DATAPOOL_EMBED_GPU": "1",
        "DATAPOOL_EMBED_NODE_SELECTOR": "cloud.google.com/gke-accelerator=nvidia-l4, pool=gpu",
    }.items():
        monkeypatch.setenv(name, value)
    tags = embed_step_k8s_tags()
    assert tags == {
        "dagster-k8s/config": {
            "container_config": {
                "resources": {
                    "requests": {"cpu": "3500m", "memory": "16Gi"},
                    "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"},
                }
            },
            "pod_spec_config": {
                "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4", "pool": "gpu"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        }
    }
    # What dagster-k8s makes of the tag: the step pod's container and pod spec.
    config = get_user_defined_k8s_config({"dagster-k8s/config": json.dumps(tags["dagster-k8s/config"])})
    assert config.container_config["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert config.pod_spec_config["node_selector"]["pool"] == "gpu"

    only_selector = embed_step_k8s_tags({"DATAPOOL_EMBED_NODE_SELECTOR": "pool=cpu-large"})
    assert only_selector == {"dagster-k8s/config": {"pod_spec_config": {"node_selector": {"pool": "cpu-large"}}}}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATAPOOL_EMBED_CPU", "four", "not a Kubernetes quantity"),
        ("DATAPOOL_EMBED_MEMORY", "16 GB", "not a Kubernetes quantity"),
        ("DATAPOOL_EMBED_GPU", "0.5", "whole number of GPUs"),
        ("DATAPOOL_EMBED_NODE_SELECTOR", "gpu", "not a label key=value pair"),
        ("DATAPOOL_EMBED_NODE_SELECTOR", "a=b=c", "not a label key=value pair"),
    ],
)
def test_embed_step_k8s_tags_rejects_malformed_values(name: str, value: str, message: str) -> None:
    from datapool_pipeline.assets.k8s_tags import embed_step_k8s_tags
    from datapool_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{name}.*{message}"):
        embed_step_k8s_tags({name: value})


# ---- Helm values for the official Dagster chart ---------------------------------------------------------------

# Keys of the official chart's values (helm/dagster/values.yaml and its pydantic schema in helm/dagster/schema,
# Dagster 1.13), limited to the sections this repository's values file may use. The chart's values.schema.json
# rejects unknown keys at `helm install`; this catches a typo before that, without helm on the machine.
CHART_TOP_LEVEL = {
    "global",
    "nameOverride",
    "fullnameOverride",
    "rbacEnabled",
    "dagsterHome",
    "imagePullSecrets",
    "serviceAccount",
    "postgresqlSecretName",
    "celeryConfigSecretName",
    "dagsterWebserver",
    "dagster-user-deployments",
    "postgresql",
    "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret",
    "rabbitmq",
    "redis",
    "flower",
    "ingress",
    "computeLogManager",
    "scheduler",
    "runLauncher",
    "pythonLogs",
    "dagsterDaemon",
    "busybox",
    "migrate",
    "telemetry",
    "retention",
    "concurrency",
    "additionalInstanceConfig",
}
CHART_USER_DEPLOYMENTS = {"enabled", "enableSubchart", "imagePullSecrets", "deployments"}
CHART_USER_DEPLOYMENT = {
    "name",
    "image",
    "port",
    "dagsterApiGrpcArgs",
    "codeServerArgs",
    "includeConfigInLaunchedRuns",
    "env",
    "envConfigMaps",
    "envSecrets",
    "annotations",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "labels",
    "volumeMounts",
    "volumes",
    "schedulerName",
    "replicaCount",
}
CHART_POSTGRESQL = {
    "enabled",
    "image",
    "postgresqlHost",
    "postgresqlUsername",
    "postgresqlPassword",
    "postgresqlDatabase",
    "postgresqlParams",
    "postgresqlScheme",
    "service",
}
CHART_K8S_RUN_LAUNCHER = {
    "image",
    "imagePullPolicy",
    "jobNamespace",
    "loadInclusterConfig",
    "kubeconfigFile",
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "volumeMounts",
    "volumes",
    "labels",
    "failPodOnRunFailure",
    "resources",
    "schedulerName",
    "securityContext",
    "runK8sConfig",
}
CHART_RUN_K8S_CONFIG = {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata"}
CHART_DAEMON = {
    "enabled",
    "image",
    "runCoordinator",
    "heartbeatTolerance",
    "env",
    "envConfigMaps",
    "envSecrets",
    "deploymentLabels",
    "labels",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "annotations",
    "runMonitoring",
    "runRetries",
    "sensors",
    "schedules",
    "schedulerName",
    "volumeMounts",
    "volumes",
}
CHART_RUN_MONITORING = {
    "enabled",
    "startTimeoutSeconds",
    "cancelTimeoutSeconds",
    "maxResumeRunAttempts",
    "pollIntervalSeconds",
    "freeSlotsAfterRunEndSeconds",
}
CHART_CONCURRENCY = {"enabled", "pools", "runs"}


def helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def test_helm_values_use_only_keys_of_the_official_chart() -> None:
    values = helm_values()
    assert set(values) <= CHART_TOP_LEVEL, set(values) - CHART_TOP_LEVEL
    user = values["dagster-user-deployments"]
    assert set(user) <= CHART_USER_DEPLOYMENTS
    for deployment in user["deployments"]:
        assert set(deployment) <= CHART_USER_DEPLOYMENT, set(deployment) - CHART_USER_DEPLOYMENT
    assert set(values["postgresql"]) <= CHART_POSTGRESQL
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert set(launcher) <= CHART_K8S_RUN_LAUNCHER, set(launcher) - CHART_K8S_RUN_LAUNCHER
    assert set(launcher.get("runK8sConfig", {})) <= CHART_RUN_K8S_CONFIG
    daemon = values["dagsterDaemon"]
    assert set(daemon) <= CHART_DAEMON
    assert set(daemon["runMonitoring"]) <= CHART_RUN_MONITORING
    assert set(values["concurrency"]) <= CHART_CONCURRENCY


def test_helm_values_deploy_this_image_and_keep_the_instance_limits() -> None:
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    from datapool_pipeline.assets.k8s_tags import embed_step_k8s_tags

    values = helm_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    # The chart runs `dagster code-server start -h 0.0.0.0 -p <port> <codeServerArgs>`: the image's CMD.
    argv = dockerfile_cmd()
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert deployment["codeServerArgs"] == ["-m", options["-m"]]
    assert str(deployment["port"]) == options["-p"]
    assert "dagsterApiGrpcArgs" not in deployment
    env = deployment["env"]
    assert env["DATAPOOL_DATASETS"] == "/app/datasets.yaml" and env["DATAPOOL_EXECUTOR"] == "k8s"
    mounts = {m["mountPath"]: m["name"] for m in deployment["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["volumes"]}
    assert volumes[mounts[env["DATAPOOL_DATASETS"]]]["configMap"]["name"] == "datapool-datasets"
    assert {"name": "datapool-storage-credentials"} in deployment["envSecrets"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    # The embedding step's settings in the values parse, and give a resource request.
    tags = embed_step_k8s_tags({k: str(v) for k, v in env.items()})
    assert tags["dagster-k8s/config"]["container_config"]["resources"]["requests"]["memory"]

    # Run pods: dagster-k8s accepts the container / pod spec config (raises on an unknown Kubernetes field).
    run_k8s = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    UserDefinedDagsterK8sConfig(
        container_config=run_k8s.get("containerConfig"), pod_spec_config=run_k8s.get("podSpecConfig")
    )

    # Same run limits as the repository's dagster.yaml, with a queued run coordinator and run monitoring.
    instance = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    assert concurrency["runs"]["tagConcurrencyLimits"] == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    assert concurrency["pools"]["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"] == 1
    daemon = values["dagsterDaemon"]
    # The run coordinator that tags backfill runs with their dataset, as in the repository's dagster.yaml; the
    # daemon and the webserver, which import it, run the code location's image.
    assert daemon["runCoordinator"]["enabled"] and daemon["runCoordinator"]["type"] == "CustomRunCoordinator"
    custom = daemon["runCoordinator"]["config"]["customRunCoordinator"]
    assert (custom["module"], custom["class"]) == (instance["run_coordinator"]["module"],
                                                   instance["run_coordinator"]["class"])
    code_image = values["dagster-user-deployments"]["deployments"][0]["image"]
    for image in (daemon["image"], values["dagsterWebserver"]["image"]):
        assert (image["repository"], image["tag"]) == (code_image["repository"], code_image["tag"])
    assert daemon["runMonitoring"]["enabled"] is True
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
