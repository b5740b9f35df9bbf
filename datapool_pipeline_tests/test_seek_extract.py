"""Seek-based extraction of picks (media/video.py extract_frames_png): pixel-identical to the single pass.

Real ffmpeg on generated H.264 videos (x264 defaults: B-frames), short and long GOPs, with and without an fps
option; the manifest's timestamps come from FrameStream as in the embedding pass.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datapool_pipeline.media import video
from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable
from datapool_pipeline.media.video import FrameStream, count_decodes, extract_frames_png

pytestmark = pytest.mark.skipif(video.ffprobe_executable() is None, reason="no ffprobe: extraction never seeks")


def _make(path: Path, *, rate: str, seconds: float, gop: int, bframes: bool = True) -> Path:
    """A moving test pattern (every frame differs) with noise, so a wrong frame cannot look right."""
    x264 = "" if bframes else ":bframes=0"
    subprocess.run([ffmpeg_executable(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=128x72:rate={rate},noise=alls=20:allf=t", "-t", str(seconds),
                    "-c:v", "libx264", "-g", str(gop), "-x264-params", f"keyint={gop}{x264}",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _stamps(path: Path, options: dict[str, object]) -> dict[int, float]:
    stream = FrameStream(str(path), 8, **options)  # type: ignore[arg-type]
    for _ in stream:
        pass
    return dict(enumerate(stream.timestamps))


@pytest.mark.parametrize(
    ("rate", "gop", "bframes", "options", "picks"),
    [
        ("30", 250, True, {"fps": 1}, [2, 4, 5]),  # long GOP, x264 defaults, 1 sample/s
        ("30000/1001", 12, True, {"fps": 1}, [0, 2, 5]),  # NTSC rate: the fps filter's rounding matters
        ("25", 10, True, {"fps": 3}, [1, 4, 13, 17]),  # samples between source frames
        ("30", 15, False, {}, [0, 44, 45, 100, 179]),  # every frame, short GOP, no B-frames
        ("24", 48, True, {}, [1, 95, 120, 143]),  # every frame, B-frames: decode order != presentation order
    ],
)
def test_seek_pngs_are_the_single_pass_pngs(tmp_path: Path, rate: str, gop: int, bframes: bool,
                                            options: dict[str, object], picks: list[int]) -> None:
    path = _make(tmp_path / "v.mp4", rate=rate, seconds=6, gop=gop, bframes=bframes)
    stamps = _stamps(path, options)
    single = extract_frames_png(str(path), picks, **options)  # type: ignore[arg-type]
    frames = video._probe_frames(str(path))
    assert frames is not None
    positions = video._source_positions(frames, picks, [stamps[i] for i in picks], options.get("fps"))  # type: ignore[arg-type]
    assert positions is not None
    for index, pos in zip(picks, positions, strict=True):  # each pick by its own seek, cost model aside
        pngs = video._seek_pngs(str(path), frames, [pos])
        assert pngs is not None
        assert np.array_equal(_pixels(pngs[pos]), _pixels(single[index])), (index, pos)
    grouped = video._seek_pngs(str(path), frames, sorted(set(positions)))  # all from one seek
    assert grouped is not None
    for index, pos in zip(picks, positions, strict=True):
        assert np.array_equal(_pixels(grouped[pos]), _pixels(single[index])), (index, pos)
    # Through the public function (seeking when cheaper), the same pixels, and one decode counted.
    with count_decodes() as decodes:
        got = extract_frames_png(str(path), picks, timestamps=stamps, **options)  # type: ignore[arg-type]
    assert decodes[str(path)] == 1
    for index in picks:
        assert np.array_equal(_pixels(got[index]), _pixels(single[index]))


def test_seeking_is_chosen_by_cost_and_refused_without_proof(tmp_path: Path) -> None:
    path = _make(tmp_path / "v.mp4", rate="30", seconds=6, gop=30)
    stamps = _stamps(path, {"fps": 1})
    frames = video._probe_frames(str(path))
    assert frames is not None
    # A late pick in a short GOP: seeking decodes ~1 GOP instead of ~150 frames.
    assert video._extract_by_seeking(str(path), [5], stamps, 1, False, None) is not None
    # Every frame picked: the single pass is cheaper.
    every = _stamps(path, {})
    assert video._extract_by_seeking(str(path), list(range(180)), every, None, False, None) is None
    # mpdecimate's choice is not recorded; timestamps that disagree with the mapping (another option, an older
    # manifest's frames) are refused.
    assert video._extract_by_seeking(str(path), [5], stamps, 1, True, None) is None
    assert video._extract_by_seeking(str(path), [5], {5: 5.5}, 1, False, None) is None
    assert video._extract_by_seeking(str(path), [5], stamps, None, False, None) is None
