"""Exact duplicate frames add nothing: a run stops selecting when only copies are left, and a run whose
new samples all copy the datapool aborts with the reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.selection import greedy_k_center
from datapool_pipeline.storage import LocalStorage


def _static_video(path: Path, colour: str) -> None:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c={colour}:s=160x120:d=2:r=10",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def test_greedy_stops_at_copies() -> None:
    x = np.eye(4, 8, dtype=np.float32)
    candidates = np.concatenate([x, x[:2], x[:1]])  # 4 distinct + 3 copies
    result = greedy_k_center(candidates, 7)
    picked = {tuple(candidates[i]) for i in result.picks}
    assert len(result.picks) == len(picked) == 4  # one of each distinct vector, then it stops
    assert greedy_k_center(candidates, 7, stop_at_duplicates=False).picks[:4] == result.picks
    assert greedy_k_center(x[:2], 2, pool=x).picks == []  # nothing but copies of the pool


@pytest.mark.slow
def test_static_video_selects_one_frame_then_copies_abort(cli, video_dataset, dagster_home) -> None:
    yaml_path, input_dir, output = video_dataset
    ds = ("--datasets", str(yaml_path))
    _static_video(input_dir / "static.mp4", "gray")
    first = cli(*ds, "run", "videos-datapool", "--n-samples", "5")
    assert first.code == 0, first.err
    assert "selected 1 of the 5 requested" in first.err
    assert DatapoolStore(LocalStorage(output)).load_state().size == 1

    _static_video(input_dir / "same-again.mp4", "gray")  # a second file with the same picture
    second = cli(*ds, "run", "videos-datapool", "--use-datapool", "--n-samples", "5")
    assert second.code == 1
    assert "nothing left to add" in second.err and "exact copies of datapool samples" in second.err
    assert DatapoolStore(LocalStorage(output)).load_state().size == 1
