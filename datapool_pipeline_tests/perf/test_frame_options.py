"""fps / skip_duplicates / scene_threshold change which frames are samples, consistently between the
streaming decoder and the full-resolution extraction; datasets.yaml validates them."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datapool_pipeline.datasets import VideoSpec, parse_datasets
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable
from datapool_pipeline.media.video import FrameStream, extract_frames_png


@pytest.fixture(scope="module")
def frozen_video(tmp_path_factory: pytest.TempPathFactory) -> str:
    """2 s of motion, then one frame held for 4 s, then 2 s of other motion (10 fps, 160x120)."""
    path = tmp_path_factory.mktemp("v") / "frozen.mp4"
    graph = (
        "[0:v]split[a][h];[h]trim=start_frame=19:end_frame=20,setpts=PTS-STARTPTS,"
        "tpad=stop_mode=clone:stop_duration=4,trim=duration=4[b];[1:v]setpts=PTS-STARTPTS[c];"
        "[a][b][c]concat=n=3:v=1:a=0,fps=10[out]"
    )
    subprocess.run(
        [ffmpeg_executable(), "-y", "-v", "error", "-f", "lavfi", "-t", "2", "-i", "testsrc2=size=160x120:rate=10",
         "-f", "lavfi", "-t", "2", "-i", "mandelbrot=size=160x120:rate=10", "-filter_complex", graph,
         "-map", "[out]", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return str(path)


def count(video: str, **options: object) -> tuple[int, list[float]]:
    stream = FrameStream(video, 32, **options)  # type: ignore[arg-type]
    frames = list(stream)
    assert stream.error is None
    return len(frames), stream.timestamps


def test_defaults_keep_every_frame(frozen_video: str) -> None:
    n, stamps = count(frozen_video)
    assert n == 80
    assert stamps[:3] == pytest.approx([0.0, 0.1, 0.2])


def test_fps_and_duplicate_skipping_reduce_frames(frozen_video: str) -> None:
    every, _ = count(frozen_video)
    at_2fps, stamps = count(frozen_video, fps=2.0)
    assert at_2fps == 16 and stamps[1] == pytest.approx(0.5)
    deduped, kept = count(frozen_video, skip_duplicates=True)
    # The 4 s frozen segment (40 frames) collapses to about one frame; moving frames stay.
    assert 38 <= deduped <= 45 < every
    assert not any(2.3 < t < 5.9 for t in kept)
    scenes, _ = count(frozen_video, scene_threshold=0.3)
    assert 1 <= scenes < deduped


@pytest.mark.parametrize("options", [{"skip_duplicates": True}, {"fps": 5.0, "skip_duplicates": True}])
def test_extracted_frames_are_the_streamed_frames(frozen_video: str, options: dict[str, object]) -> None:
    """Frame index i means the same picture in FrameStream and extract_frames_png."""
    stream = FrameStream(frozen_video, 32, **options)  # type: ignore[arg-type]
    small = list(stream)
    wanted = [0, len(small) // 2, len(small) - 1]
    pngs = extract_frames_png(frozen_video, wanted, **options)  # type: ignore[arg-type]
    for i in wanted:
        full = Image.open(io.BytesIO(pngs[i])).convert("RGB").resize((43, 32), Image.Resampling.BICUBIC)
        crop = np.asarray(full, dtype=np.float32)[:, 5:37]
        errors = [np.abs(crop - f.astype(np.float32)).mean() for f in small]
        assert int(np.argmin(errors)) == i or errors[i] == pytest.approx(min(errors), abs=1.0)


def test_video_block_validation(tmp_path: Path) -> None:
    def parse(video: object) -> VideoSpec:
        raw = {"datasets": {"d": {"type": "VIDEOS", "input": "in", "output": "out", "video": video}}}
        return parse_datasets(raw, base_dir=tmp_path)["d"].video

    assert parse({}) == VideoSpec()
    spec = parse({"fps": 2, "skip_duplicates": True, "scene_threshold": 0.2})
    assert spec.frame_options() == {"fps": 2.0, "skip_duplicates": True, "scene_threshold": 0.2}
    with pytest.raises(ConfigError, match=r"video.skip_duplicates: must be true or false"):
        parse({"skip_duplicates": "yes"})
    with pytest.raises(ConfigError, match=r"video.scene_threshold: must be < 1"):
        parse({"scene_threshold": 1.5})
    with pytest.raises(ConfigError, match=r"video.mpdecimate: unknown field"):
        parse({"mpdecimate": True})
