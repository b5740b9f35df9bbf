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
