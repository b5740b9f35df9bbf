"""Run config and datasets.yaml validation: every error names the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from datapool_pipeline.config import parse_run_config
from datapool_pipeline.datasets import load_datasets, parse_datasets
from datapool_pipeline.errors import ConfigError


def test_vendor_shaped_config_parses() -> None:
    cfg = parse_run_config(
        {
            "worker_config": {"use_datapool": True, "datasource": {"process_all": True}, "enable_training": False},
            "selection_config": {
                "n_samples": 50,
                "strategies": [{"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}],
            },
        }
    )
    assert (cfg.use_datapool, cfg.process_all, cfg.n_samples, cfg.proportion_samples) == (True, True, 50, None)
    assert parse_run_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"selection_config": {}}, "exactly one of n_samples"),
        ({"selection_config": {"n_samples": 5, "proportion_samples": 0.5}}, "both set"),
        ({"selection_config": {"n_samples": 0}}, "selection_config.n_samples"),
        ({"selection_config": {"n_samples": 2.5}}, "selection_config.n_samples"),
        ({"selection_config": {"proportion_samples": 1.5}}, "selection_config.proportion_samples"),
        ({"selection_config": {"proportion_samples": 0}}, "selection_config.proportion_samples"),
        ({"selection_config": {"n_samples": 5, "n_sample": 3}}, "n_sample"),
        (
            {"worker_config": {"use_datapool": "yes"}, "selection_config": {"n_samples": 1}},
            "worker_config.use_datapool",
        ),
        ({"worker_config": {"datasource": {"process_al": True}}, "selection_config": {"n_samples": 1}}, "process_al"),
        ({"selection_config": {"n_samples": 1, "strategies": [{"input": {"type": "EMBEDDINGS"},
                                                               "strategy": {"type": "RANDOM"}}]}}, "strategies[0]"),
        ({"worker_config": {"enable_training": True}, "selection_config": {"n_samples": 1}}, "enable_training"),
    ],
)
def test_bad_run_config_names_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_run_config(raw)


def test_datasets_yaml_resolves_relative_paths(tmp_path: Path) -> None:
    f = tmp_path / "datasets.yaml"
    f.write_text("datasets:\n  my-set:\n    type: videos\n    input: in\n    output: file://out\n")
    spec = load_datasets(f)["my-set"]
    assert spec.type == "VIDEOS" and spec.input == str(tmp_path / "in") and spec.output == str(tmp_path / "out")
    assert spec.asset_prefix == "my_set"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "AUDIO", "input": "a", "output": "b"}, "type"),
        ({"type": "IMAGES", "output": "b"}, "input"),
        ({"type": "IMAGES", "input": "a", "output": "a"}, "overlap"),
        ({"type": "IMAGES", "input": "a", "output": "b", "owners": ["nobody"]}, "owners"),
        ({"type": "IMAGES", "input": "a", "output": "b", "embedding": {"batch_size": 0}}, "embedding.batch_size"),
        ({"type": "IMAGES", "input": "a", "output": "b", "embedding": {"device": "tpu"}}, "embedding.device"),
        ({"type": "IMAGES", "input": "a", "output": "b", "colour": 1}, "colour"),
        ({"type": "IMAGES", "input": "http://x/a", "output": "b"}, "unsupported location"),
    ],
)
def test_bad_datasets_yaml_names_the_field(tmp_path: Path, body: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_datasets({"datasets": {"ds": body}}, base_dir=tmp_path)


def test_missing_datasets_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--datasets"):
        load_datasets(tmp_path / "nope.yaml")


def test_long_values_are_trimmed_and_secrets_never_quoted(tmp_path: Path) -> None:
    """A 10 kB string or a long list quoted in an error (by the schema or by a validator) is cut, so the
    message stays one readable line; a credentials prefix field never quotes what was pasted into it."""
    long_text = "x" * 10240
    strategies = [{"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}},
                  {"input": {"type": "EMBEDDINGS", "text": [" " * 5000]}, "strategy": {"type": "SIMILARITY"}}]
    cases = [
        ({"selection_config": {"n_samples": long_text}},
         "selection_config.n_samples: must be a positive integer, got 'xxx", "...' (10240 characters)"),
        ({"selection_config": {"n_samples": list(range(5000))}},
         "selection_config.n_samples: must be a positive integer, got [0, 1, 2,", "...] (5000 items)"),
        ({"selection_config": {"n_samples": 1, long_text: 1}}, "selection_config.xxx", "...: unknown field; allowed:"),
        ({"selection_config": {"n_samples": 1, "strategies": strategies}},  # quoted by a validator
         "selection_config.strategies[1].input.text[0]: must be a non-empty string, got '  ", "...' (5000 characters)"),
    ]
    for raw, start, part in cases:
        with pytest.raises(ConfigError) as info:
            parse_run_config(raw)
        message = str(info.value)
        assert message.startswith(start) and part in message and "\n" not in message and len(message) < 220, message
    with pytest.raises(ConfigError) as info:
        parse_datasets({"datasets": {"d": {"type": "IMAGES", "input": f"ftp://{long_text}", "output": "o"}}}, tmp_path)
    assert "d.input[0].uri: unsupported location 'ftp://xxx" in str(info.value)
    assert "...' (10246 characters): use a path" in str(info.value) and len(str(info.value)) < 220

    secret = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY" * 500
    with pytest.raises(ConfigError) as info:
        parse_datasets({"datasets": {"d": {"type": "IMAGES", "input": "s3://in/x", "output": "s3://out/x",
                                           "credentials": {"input": secret}}}}, tmp_path)
    assert str(info.value).startswith("datasets.yaml: datasets.d.credentials.input: must be an environment-variable")
    assert "wJalr" not in str(info.value) and len(str(info.value)) < 220


def _yaml_examples(*files: Path) -> list[tuple[str, object]]:
    """Every ```yaml block of the files, parsed: (file:line, document)."""
    import re

    import yaml

    found = []
    for file in files:
        text = file.read_text()
        for block in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            found.append((f"{file.name}:{text[:block.start()].count(chr(10)) + 2}", yaml.safe_load(block.group(1))))
    return found


def test_every_run_config_example_of_the_docs_is_valid(tmp_path: Path) -> None:
    """The run-config examples of README.md and docs/*.md (every strategy's example in configuration.md among
    them), and the sensors' run configs in datasets.yaml examples, parse with the real schema and pass the
    launchpad's typed config, so the docs never show a config that would be refused."""
    import dagster as dg

    from datapool_pipeline.datasets import SensorSpec
    from datapool_pipeline.definitions import build_definitions
    from datapool_pipeline.schema import validate

    root = Path(__file__).resolve().parents[1]
    job = build_definitions(str(root / "datasets.yaml")).resolve_job_def("videos_datapool_launch")
    strategies: set[str] = set()
    checked = 0
    for where, doc in _yaml_examples(root / "README.md", *sorted((root / "docs").glob("*.md"))):
        if not isinstance(doc, dict):
            continue
        configs = [doc] if {"worker_config", "selection_config"} & set(doc) else []
        for name, dataset in (doc.get("datasets") or {}).items():
            if isinstance(dataset, dict) and isinstance(dataset.get("sensor"), dict):
                sensor = validate(SensorSpec, dataset["sensor"], f"{where}: datasets.{name}.sensor")
                configs.append(sensor.run_config)
        for config in configs:
            parsed = parse_run_config(config)
            launchpad = dg.validate_run_config(job, {"ops": {"videos_datapool__find_new_files": {"config": config}}})
            assert launchpad is not None, where
            if where.startswith("configuration.md"):
                strategies |= {entry.strategy.type for entry in parsed.selection_config.strategies}
            checked += 1
    assert checked >= 8
    assert strategies == {"DIVERSITY", "TYPICALITY", "SIMILARITY", "WEIGHTS", "THRESHOLD", "BALANCE"}
