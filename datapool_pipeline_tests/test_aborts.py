"""Every abort: one-line reason, non-zero exit, nothing written to the datapool."""

from __future__ import annotations

from pathlib import Path

import pytest

from datapool_pipeline_tests.helpers import add_videos


def snapshot(output: Path) -> dict[str, int]:
    if not output.exists():
        return {}
    return {p.relative_to(output).as_posix(): p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}


def committed(output: Path) -> list[str]:
    commits = output / "datapool" / "commits"
    return sorted(p.name for p in commits.glob("*.json")) if commits.exists() else []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "exactly one of n_samples"),
        (("--n-samples", "0"), "selection_config.n_samples: must be a positive integer"),
        (("--proportion-samples", "1.5"), "selection_config.proportion_samples"),
        (("--proportion-samples", "0"), "selection_config.proportion_samples"),
    ],
)
def test_bad_amounts_fail_before_any_work(cli, video_dataset, args, message) -> None:
    yaml_path, input_dir, output = video_dataset
    add_videos(input_dir, ["a.mov"], seconds=1)
    result = cli("--datasets", str(yaml_path), "run", "videos-datapool", *args)
    assert result.code == 2
    assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert snapshot(output) == {}


def test_both_amounts_in_config_file(cli, video_dataset, tmp_path) -> None:
    yaml_path, input_dir, output = video_dataset
    add_videos(input_dir, ["a.mov"], seconds=1)
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("selection_config:\n  n_samples: 3\n  proportion_samples: 0.5\n")
    result = cli("--datasets", str(yaml_path), "run", "videos-datapool", "--config", str(run_yaml))
    assert result.code == 2 and "both set" in result.err
    assert snapshot(output) == {}


def test_unknown_config_field_is_named(cli, video_dataset, tmp_path) -> None:
    yaml_path, input_dir, output = video_dataset
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("worker_config:\n  use_datapol: true\nselection_config:\n  n_samples: 3\n")
    result = cli("--datasets", str(yaml_path), "run", "videos-datapool", "--config", str(run_yaml))
    assert result.code == 2 and "use_datapol" in result.err and "worker_config" in result.err


@pytest.mark.slow
def test_dataset_aborts(cli, video_dataset, capfd) -> None:
    yaml_path, input_dir, output = video_dataset
    ds = ("--datasets", str(yaml_path))

    empty = cli(*ds, "run", "videos-datapool", "--n-samples", "5")
    assert empty.code == 1 and "it is empty" in empty.err and "all processed" not in empty.err
    assert committed(output) == []
    (input_dir / "notes.txt").write_text("not a video")
    other = cli(*ds, "run", "videos-datapool", "--n-samples", "5")
    assert other.code == 1 and "holds no videos (1 other file(s))" in other.err
    (input_dir / "notes.txt").unlink()

    add_videos(input_dir, ["a.mov"], seconds=2)  # 20 frames
    assert cli(*ds, "run", "videos-datapool", "--n-samples", "100").code == 0  # selects all 20
    before = snapshot(output)
    assert len(committed(output)) == 1

    add_videos(input_dir, ["b.mov"], seconds=1, first_source=1)
    not_empty = cli(*ds, "run", "videos-datapool", "--n-samples", "5")
    assert not_empty.code == 1
    assert "use_datapool" in not_empty.err and "already holds 20 samples" in not_empty.err
    assert snapshot(output) == before

    # b.mov is new, so process_all considers a.mov too; its frames are all in the pool already.
    assert cli(*ds, "run", "videos-datapool", "--use-datapool", "--n-samples", "100").code == 0
    before = snapshot(output)
    capfd.readouterr()
    nothing_left = cli(*ds, "run", "videos-datapool", "--use-datapool", "--process-all", "--n-samples", "5")
    assert nothing_left.code == 1 and "nothing left to add" in nothing_left.err
    # The run's console log names the reason, without a stack trace (the step's process writes to the
    # redirected sys.stderr when it runs in this process, to the file descriptor otherwise).
    console = nothing_left.err + "".join(capfd.readouterr())
    assert "STEP_FAILURE" in console and "Failure: nothing left to add" in console and "Stack Trace" not in console
    assert committed(output) == ["00000001.json", "00000002.json"]
    assert {k for k in snapshot(output) if "/commits/" in k or "/samples/" in k} == {
        k for k in before if "/commits/" in k or "/samples/" in k
    }


def test_unknown_dataset(cli, video_dataset) -> None:
    yaml_path, _, _ = video_dataset
    result = cli("--datasets", str(yaml_path), "tags", "nope")
    assert result.code == 2 and "no dataset named 'nope'" in result.err and "videos-datapool" in result.err


def test_missing_input_folder_is_an_error_not_nothing_new(cli, tmp_path) -> None:
    from datapool_pipeline_tests.helpers import write_datasets_yaml

    yaml_path = write_datasets_yaml(tmp_path / "d.yaml", "v", "VIDEOS", str(tmp_path / "typo"), str(tmp_path / "o"))
    result = cli("--datasets", str(yaml_path), "run", "v", "--n-samples", "5")
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert "datasets.v.input" in line and "does not exist" in line and str(tmp_path / "typo") in line


def test_unsupported_strategy_key_fails_before_any_work(cli, video_dataset, tmp_path) -> None:
    yaml_path, input_dir, output = video_dataset
    add_videos(input_dir, ["a.mov"], seconds=1)
    config = tmp_path / "run.yaml"
    config.write_text(
        "selection_config:\n  n_samples: 3\n  strategies:\n    - input: {type: EMBEDDINGS}\n"
        "      strategy: {type: DIVERSITY, stopping_condition_minimum_distance: 0.2, strenght: 1.0}\n"
    )
    result = cli("--datasets", str(yaml_path), "run", "videos-datapool", "--config", str(config))
    assert result.code == 2 and "Traceback" not in result.err
    line = result.err.strip().splitlines()[-1]
    assert "selection_config.strategies[0].strategy.strenght: unknown field" in line
    assert not output.exists()  # nothing registered, nothing written


def test_launchpad_schema_and_cli_parser_agree() -> None:
    import dagster as dg

    from datapool_pipeline.assets.run_config import DatapoolRunConfig
    from datapool_pipeline.config import parse_run_config

    for raw in (
        {"selection_config": {"n_samples": 5}},
        {"worker_config": {"use_datapool": True, "datasource": {"process_all": True}},
         "selection_config": {"proportion_samples": 0.25}},
        {"selection_config": {"n_samples": 2, "strategies": [
            {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}]}},
        {"selection_config": {"n_samples": 2, "strategies": [
            {"input": {"type": "EMBEDDINGS"},
             "strategy": {"type": "DIVERSITY", "stopping_condition_minimum_distance": 0.2, "strength": 1.0}},
            {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": 0.5}}]}},
    ):
        assert DatapoolRunConfig(**raw).parsed() == parse_run_config(raw)

    # The launchpad (the launch job's typed config) refuses strategy types the pipeline does not have.
    from datapool_pipeline.definitions import build_definitions

    datasets = Path(__file__).resolve().parents[1] / "datasets.yaml"
    job = build_definitions(str(datasets)).resolve_job_def("videos_datapool_launch")
    bad = {"selection_config": {"n_samples": 1, "strategies": [{"strategy": {"type": "RANDOM"}}]}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="RANDOM"):
        dg.validate_run_config(job, {"ops": {"videos_datapool__find_new_files": {"config": bad}}})
