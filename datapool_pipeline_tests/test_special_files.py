"""A named pipe (FIFO) in a local input folder is listed as a skipped file with its reason, and never opened
(opening a FIFO with no writer blocks forever, so a run that tried would hang here until the timeout)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from datapool_pipeline.config import parse_run_config
from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.datasets import DatasetSpec
from datapool_pipeline.media.kinds import NOT_REGULAR_FILE, NOT_REGULAR_FILE_REASON
from datapool_pipeline.storage import LocalStorage
from datapool_pipeline.workflow.commit import commit_staged
from datapool_pipeline.workflow.discovery import assign_shards, list_inventory, plan_run
from datapool_pipeline.workflow.embeddings import embed_shard
from datapool_pipeline.workflow.selection import select_for_run
from datapool_pipeline_tests.helpers import tiny_embedder

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


@pytest.mark.timeout(120)
def test_a_fifo_in_the_input_is_skipped_with_a_reason_and_never_opened(tmp_path: Path) -> None:
    spec = DatasetSpec(name="imgs", type="IMAGES", input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                       images_per_shard=4)
    folder = Path(spec.input)
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
    os.mkfifo(folder / "pipe.png")  # an image by its name
    os.mkfifo(folder / "sub" / "queue")

    input_storage, store = LocalStorage(spec.input), DatapoolStore(LocalStorage(spec.output))
    inventory = list_inventory(spec, input_storage)
    assert sorted(inventory.files["raw_key"]) == [f"img_{i}.png" for i in range(6)]
    special = inventory.other_type.filter(pl.col("media_type") == NOT_REGULAR_FILE)
    assert sorted(special["raw_key"]) == ["pipe.png", "sub/queue"]
    assert [kind for _, _, kind in input_storage.not_regular] == ["named pipe (FIFO)", "named pipe (FIFO)"]

    # A whole run: the pipes are named in the log and recorded as skipped with the reason; nothing blocks.
    lines: list[str] = []
    shards, _ = assign_shards(spec, store, inventory.files)
    plan = plan_run(spec, store, input_storage, shards, process_all=False, log=lines.append)
    assert any("2 file(s) that are not regular files" in line and "'pipe.png'" in line for line in lines), lines
    model = tiny_embedder()
    for shard in shards:
        embed_shard(spec, store, input_storage, model, shard)
    summary = select_for_run(
        spec, store, plan, parse_run_config({"worker_config": {"use_datapool": False},
                                             "selection_config": {"n_samples": 3}}),
        staging_id="run-1", started_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
        fingerprint=model.fingerprint, dim=model.dim,
    )
    commit = commit_staged(spec, store, input_storage, summary.staging_id, run_id="run-1")
    assert commit.n_samples == 3
    processed = store.read_processed(commit)
    skipped = processed.filter(pl.col("raw_key").is_in(["pipe.png", "sub/queue"]))
    assert skipped["status"].to_list() == ["skipped", "skipped"]
    assert skipped["error"].to_list() == [NOT_REGULAR_FILE_REASON] * 2
