"""report.json `strategies`: what each configured strategy did, carried from the selection through the commit
manifest (Commit.selection) into the report and the PDF; old commits without the record still report."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from datapool_pipeline.config import parse_run_config
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datapool.check import check_datapool
from datapool_pipeline.datapool.store import checkpoint_key, parse_checkpoint, sha256
from datapool_pipeline.datasets import parse_datasets
from datapool_pipeline.report.build import build_report
from datapool_pipeline.report.pdf import render_pdf
from datapool_pipeline.report.strategies import NOT_RECORDED
from datapool_pipeline.selection.record import weights_summary
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.commit import commit_staged
from datapool_pipeline_tests.helpers import TINY_FINGERPRINT
from datapool_pipeline_tests.test_metadata import write_mixed_images
from datapool_pipeline_tests.test_workflow import select_new

DIVERSITY = {"input": {"type": "EMBEDDINGS"},
             "strategy": {"type": "DIVERSITY", "stopping_condition_minimum_distance": 0.0001}}
TYPICALITY = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": 0.5}}
SIMILARITY = {"input": {"type": "EMBEDDINGS", "keys": ["sharp_1.png"]},
              "strategy": {"type": "SIMILARITY", "strength": 10}}
THRESHOLD = {"input": {"type": "METADATA", "key": "sharpness"},
             "strategy": {"type": "THRESHOLD", "threshold": 100, "operation": "BIGGER"}}
WEIGHTS = {"input": {"type": "METADATA", "key": "sharpness"}, "strategy": {"type": "WEIGHTS", "strength": 2}}


@pytest.fixture
def committed(tmp_path: Path):  # noqa: ANN201
    raw = {"datasets": {"imgs": {
        "type": "IMAGES", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "images_per_shard": 4,
        # The filter drops the black images; THRESHOLD the blurred ones (at the tiny embedder's 32x32 their
        # sharpness is below 100, the sharp ones' above).
        "filters": {"drop_black": True}}}}
    spec = parse_datasets(raw, tmp_path)["imgs"]
    kinds = write_mixed_images(Path(spec.input))  # 3 sharp, 2 black, 2 blurred
    config = {"selection_config": {"n_samples": 2,
                                   "strategies": [DIVERSITY, TYPICALITY, SIMILARITY, THRESHOLD, WEIGHTS]}}
    summary = select_new(spec, config, "run-1")
    assert (summary.filtered, summary.threshold_removed, summary.candidates, summary.selected) == (
        {"black": 2}, 2, 3, 2)
    store = DatapoolStore(LocalStorage(spec.output))
    meta = store.read_staging("run-1")[0]  # type: ignore[index]
    commit = commit_staged(spec, store, LocalStorage(spec.input), "run-1", run_id="run-1")
    return spec, store, commit, kinds, meta


def test_report_json_says_what_each_strategy_did(committed) -> None:  # noqa: ANN001
    spec, store, commit, kinds, meta = committed
    # The record is in the manifest (and survives a reload of the chain).
    (loaded,) = store.load_all_manifests()
    assert loaded.selection == commit.selection and loaded.selection["new_samples"] == 7
    report = build_report(spec, store, commit).body
    section = report["strategies"]
    assert section["recorded"] is True and section["note"] is None
    assert (section["new_samples"], section["filters"], section["candidates"], section["requested"],
            section["selected"], section["stop_reason"]) == (7, {"black": 2}, 3, 2, 2, "requested")
    entries = {e["type"]: e for e in section["entries"]}
    assert list(entries) == ["DIVERSITY", "TYPICALITY", "SIMILARITY", "THRESHOLD", "WEIGHTS"]

    div = entries["DIVERSITY"]
    assert div["settings"] == {"stopping_condition_minimum_distance": 0.0001, "strength": 1.0}
    assert div["result"]["requested"] == 2 and div["result"]["selected"] == 2
    assert div["result"]["stop_reason"] == "requested"
    assert div["result"]["stopping_condition_minimum_distance"] == 0.0001
    picked = store.read_samples(commit)["pick_distance"].to_numpy()
    assert div["smallest_pick_distance"] == pytest.approx(float(picked[np.isfinite(picked)].min()), abs=1e-6)
    assert div["result"]["first_distance"] is None  # empty datapool: the first pick is infinitely far

    typical = entries["TYPICALITY"]["result"]
    assert typical["strength"] == 0.5 and typical == {"strength": 0.5, **meta["typicality"]}
    density = typical["candidates"]  # kNN density in [0, 1] over the 3 candidates, the picks' within it
    assert 0.0 <= density["min"] <= typical["picks"]["min"] <= typical["picks"]["max"] <= density["max"] <= 1.0

    sim = entries["SIMILARITY"]["result"]
    assert sim["query"] == "keys" and sim["queries"] == ["sharp_1.png"] and sim["strength"] == 10.0
    scores = meta["similarity"]["pick_scores"]
    assert sim["picks"] == {"mean": pytest.approx(np.mean(scores), abs=1e-4), "min": min(scores), "max": max(scores)}
    assert sim["picks"]["max"] == pytest.approx(1.0, abs=1e-3)  # the query image is a candidate: strength 10 picks it
    assert sim["candidates"]["mean"] == meta["similarity"]["candidates_mean"]

    assert entries["THRESHOLD"]["result"] == {"key": "sharpness", "operation": "BIGGER", "threshold": 100.0,
                                              "removed": 2, "unknown": 0}

    weights = entries["WEIGHTS"]["result"]
    emb = pl.concat([store.read_shard_embeddings(s, TINY_FINGERPRINT)
                     for s in store.read_registry()["shard_id"].unique().to_list()])
    sharpness = dict(zip(emb["raw_key"], emb["sharpness"], strict=True))
    picks = [sharpness[k] for k in store.read_samples(commit)["raw_key"]]
    sharp = [v for k, v in sharpness.items() if kinds[k] == "sharp"]  # the 3 candidates left
    assert weights["key"] == "sharpness" and weights["strength"] == 2.0 and weights["unknown"] == 0
    assert weights["picks"] == {"mean": pytest.approx(np.mean(picks), rel=1e-5),
                                "min": pytest.approx(min(picks), rel=1e-5), "max": pytest.approx(max(picks), rel=1e-5)}
    assert weights["candidates"]["mean"] == pytest.approx(np.mean(sharp), rel=1e-5)  # staged by the selection
    # A record without the WEIGHTS statistics: the picks' values are read from the shard caches.
    bare = replace(commit, selection={k: v for k, v in commit.selection.items() if k != "weights"})
    fallback = build_report(spec, store, bare).body["strategies"]["entries"][4]["result"]
    assert fallback == {**weights, "candidates": None}
    json.dumps(report, allow_nan=False)  # as write_report writes it

    # The PDF carries the block (no browser: figures are replaced by a note, the text is all there).
    pdf = render_pdf(report, pl.DataFrame(schema={"group": pl.String, "x": pl.Float64, "y": pl.Float64}),
                     lambda _t: None, browser="/nonexistent/chromium")
    pdf_file = Path(spec.output) / "report.pdf"
    pdf_file.write_bytes(pdf)
    text = " ".join(subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(pdf_file), "-"], check=True,
                                   capture_output=True, text=True, timeout=60).stdout.split())
    assert "How the samples were chosen" in text
    assert "Of 7 new samples, the degenerate-frame filter dropped 2 black; THRESHOLD removed 2, leaving 3" in text
    assert "kept sharpness BIGGER 100: removed 2" in text

    # `datapool check` is content with the new manifests and with a checkpoint holding them.
    assert store.write_checkpoint(store.load_state()) is not None
    assert store.load_state().checkpoint is not None and store.load_state().commits == [commit]
    assert check_datapool(store, dataset_type="IMAGES").damage == []


def test_weights_summary_states_the_key_values_of_picks_and_candidates() -> None:
    selection = parse_run_config({"selection_config": {"n_samples": 2, "strategies": [DIVERSITY, WEIGHTS]}})
    candidates = pl.DataFrame({"sharpness": [1.0, None, 3.0, 10.0]})
    (summary,) = weights_summary(candidates, [3, 0], selection.selection_config)
    assert summary == {"key": "sharpness", "strength": 2.0, "picks": {"mean": 5.5, "min": 1.0, "max": 10.0},
                       "candidates": {"mean": pytest.approx(14 / 3), "min": 1.0, "max": 10.0}, "unknown": 1}


def test_old_commits_and_checkpoints_without_the_record_still_load_and_report(committed) -> None:  # noqa: ANN001
    spec, store, commit, _, _ = committed
    # A manifest written before the record existed: no `selection` field.
    key = f"datapool/commits/{commit.seq:08d}.json"
    raw = json.loads(store.storage.read_bytes(key))
    del raw["selection"]
    store.storage.write_bytes(key, json.dumps(raw, indent=2, sort_keys=True).encode())
    (old,) = store.load_commits()
    assert old.selection == {} and old == replace(commit, selection={})
    section = build_report(spec, store, old).body["strategies"]
    assert section["recorded"] is False and section["note"] == NOT_RECORDED
    assert [e["type"] for e in section["entries"]] == ["DIVERSITY", "TYPICALITY", "SIMILARITY", "THRESHOLD", "WEIGHTS"]
    assert all(e["result"] is None for e in section["entries"])
    assert section["entries"][3]["settings"] == {"threshold": 100.0, "operation": "BIGGER", "strength": 1.0}

    # A checkpoint written before the record existed (its commits lack `selection`) still verifies.
    commits = json.dumps([{k: v for k, v in asdict(old).items() if k != "selection"}], separators=(",", ":")).encode()
    header = {"format": 1, "seq": 1, "commits_sha256": sha256(commits),
              "processed": {"key": "datapool/compacted/x-processed.parquet", "rows": 0, "sha256": ""},
              "registry": {"key": "datapool/compacted/x-registry.parquet", "rows": 0, "sha256": "", "after": "",
                           "covered": []}}
    checkpoint = parse_checkpoint(checkpoint_key(1), json.dumps(header).encode() + b"\n" + commits)
    assert checkpoint.commits == [old]
    with pytest.raises(ValueError, match="holds a commit with the fields"):
        bad = json.dumps([{k: v for k, v in asdict(old).items() if k != "tag"}], separators=(",", ":")).encode()
        head = json.dumps({**header, "commits_sha256": sha256(bad)}).encode()
        parse_checkpoint(checkpoint_key(1), head + b"\n" + bad)


def test_balance_outcome_is_shown_per_key() -> None:
    from datapool_pipeline.report.strategies import strategies_section, summary_rows

    balance = {"input": {"type": "METADATA", "key": "weather"},
               "strategy": {"type": "BALANCE", "target": {"sunny": 0.5, "rain": 0.5}}}
    outcome = {"key": "weather", "strength": 1.0, "target": {"sunny": 0.5, "rain": 0.5},
               "pool": {"sunny": 3, "rain": 1}, "picks": {"sunny": 0, "rain": 2},
               "before": {"sunny": 0.75, "rain": 0.25}, "achieved": {"sunny": 0.5, "rain": 0.5},
               "picks_without_value": 0}
    config = {"selection_config": {"n_samples": 2, "strategies": [DIVERSITY, balance]}}
    record = {"format": 1, "requested": 2, "selected": 2, "stop_reason": "requested", "candidates": 5,
              "new_samples": 5, "thresholds": [], "balance": [outcome]}
    samples = pl.DataFrame({"pick_distance": [0.5, 0.25]})
    section = strategies_section(config, record, samples)
    assert section["entries"][1]["result"] == outcome
    assert section["entries"][0]["smallest_pick_distance"] == 0.25
    assert summary_rows(section)[1] == ("BALANCE on weather", "target {sunny: 0.5, rain: 0.5}",
                                        "datapool + picks now sunny 50% (target 50%, was 75%), rain 50% "
                                        "(target 50%, was 25%)")
