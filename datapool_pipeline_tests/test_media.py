"""Decoding with real ffmpeg and Pillow: frame streams, full-resolution extraction, image modes."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datapool_pipeline.demo import make_video
from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable
from datapool_pipeline.media.image import ImageDecodeError, decode_image, resize_center_crop
from datapool_pipeline.media.kinds import media_kind
from datapool_pipeline.media.video import FrameStream, extract_frames_png


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "clip.mp4", "testsrc2", seconds=3, fps=10, size="320x240")


def test_stream_yields_every_frame_scaled_with_timestamps(clip: Path) -> None:
    stream = FrameStream(str(clip), 64)
    frames = list(stream)
    assert len(frames) == 30 and stream.error is None
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert stream.timestamps == pytest.approx([i / 10 for i in range(30)], abs=1e-3)
    assert len({f.tobytes() for f in frames}) == 30  # testsrc2 moves: every frame differs


def test_stream_fps_option(clip: Path) -> None:
    stream = FrameStream(str(clip), 32, fps=2)
    assert len(list(stream)) == 6


def test_extract_full_resolution_frames_match_stream(clip: Path) -> None:
    pngs = extract_frames_png(str(clip), [0, 7, 29])
    assert sorted(pngs) == [0, 7, 29]
    images = {i: Image.open(io.BytesIO(data)) for i, data in pngs.items()}
    assert all(img.size == (320, 240) for img in images.values())
    streamed = list(FrameStream(str(clip), 224))
    for i, img in images.items():
        ours = resize_center_crop(img.convert("RGB"), 224).astype(np.int16)
        diffs = [np.abs(ours - frame.astype(np.int16)).mean() for frame in streamed]
        assert int(np.argmin(diffs)) == i  # the extracted PNG is the same frame the stream numbered i


def test_corrupt_and_non_video_files_report_a_reason(tmp_path: Path, clip: Path) -> None:
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[:3000])
    text = tmp_path / "text.mp4"
    text.write_text("hello")
    for path in (truncated, text):
        stream = FrameStream(str(path), 32)
        assert list(stream) == [] or stream.error
        assert stream.error


def test_rotation_metadata_is_applied(tmp_path: Path, clip: Path) -> None:
    rotated = tmp_path / "rotated.mp4"
    base = [ffmpeg_executable(), "-loglevel", "error", "-y"]
    modern = base + ["-display_rotation", "90", "-i", str(clip), "-c", "copy", str(rotated)]
    legacy = base + ["-i", str(clip), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated)]
    if subprocess.run(modern, capture_output=True).returncode != 0:  # ffmpeg < 6 has no -display_rotation
        subprocess.run(legacy, check=True)
    png = extract_frames_png(str(rotated), [0])[0]
    assert Image.open(io.BytesIO(png)).size == (240, 320)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        Image.new("CMYK", (40, 30), (0, 255, 0, 0)),
        Image.new("RGBA", (40, 30), (255, 0, 0, 0)),
        Image.new("L", (40, 30), 128),
        Image.new("P", (40, 30), 3),
        Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)),
    ],
    ids=["cmyk", "rgba", "gray", "palette", "16bit"],
)
def test_any_mode_becomes_rgb(image: Image.Image) -> None:
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    decoded = decode_image(_encode(image, fmt))
    assert decoded.mode == "RGB" and decoded.size == (40, 30)
    if image.mode == "RGBA":
        assert decoded.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    if image.mode.startswith("I"):
        assert 140 < decoded.getpixel((0, 0))[0] < 170


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    decoded = decode_image(_encode(img, "JPEG", exif=exif))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_undecodable_images_raise_a_clear_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_media_kinds() -> None:
    assert media_kind("a/b.MOV") == "VIDEOS" and media_kind("x.jpeg") == "IMAGES"
    assert media_kind("README") == "OTHER" and media_kind("a.txt") == "OTHER"
