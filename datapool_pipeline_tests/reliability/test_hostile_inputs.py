"""A corpus of hostile inputs, generated here with real ffmpeg and Pillow, run through the CLI and Dagster.

Each file is either processed (and then its samples are real) or skipped and listed in report.json with a
reason; the run never aborts because of one file, and nothing is written outside the output datasource.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datapool_pipeline.datapool import DatapoolStore
from datapool_pipeline.demo import make_video
from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable
from datapool_pipeline.storage import LocalStorage, open_storage
from datapool_pipeline_tests.helpers import write_datasets_yaml
from datapool_pipeline_tests.storage.backends import Backend

# Slow tier: real runs on hostile media, and an S3 server.
pytestmark = pytest.mark.slow


def _ffmpeg(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([ffmpeg_executable(), "-nostdin", "-loglevel", "error", "-y", *args], capture_output=True)


def _video_corpus(folder: Path) -> tuple[set[str], set[str]]:
    """(keys that must be processed, keys that must be skipped) of a VIDEOS corpus written to folder."""
    folder.mkdir(parents=True)
    good = make_video(folder / "good.mp4", "testsrc2", seconds=2, fps=10, size="320x240")
    data = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "zero-bytes.mp4").write_bytes(b"")
    (folder / "text-named.mp4").write_text("this is not a video\n")
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(folder / "audio-only.mp4"))
    # Variable frame rate: 10 frames 50 ms apart, then 10 frames 300 ms apart.
    _ffmpeg("-f", "lavfi", "-i", "mandelbrot=size=320x240:rate=10", "-frames:v", "20",
            "-vf", "setpts='if(lt(N,10),N*0.05,0.5+(N-10)*0.3)/TB'", "-fps_mode", "vfr",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", str(folder / "variable-rate.mp4"))  # fmt: skip
    rotated = folder / "rotated 90.mp4"
    if _ffmpeg("-display_rotation", "90", "-i", str(good), "-c", "copy", str(rotated)).returncode != 0:
        _ffmpeg("-i", str(good), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated))
    ten_bit = folder / "ten-bit.mkv"
    ten_bit_args = ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-t", "2"]
    if _ffmpeg(*ten_bit_args, "-c:v", "libx264", "-pix_fmt", "yuv420p10le", str(ten_bit)).returncode != 0:
        _ffmpeg(*ten_bit_args, "-c:v", "ffv1", "-pix_fmt", "yuv420p10le", str(ten_bit))
    make_video(folder / "ünïcode 日本 clip.mp4", "life", seconds=2, fps=10, size="320x240")
    make_video(folder / "dots..in..name.mp4", "cellauto", seconds=2, fps=10, size="320x240")
    for name in ("audio-only.mp4", "variable-rate.mp4", rotated.name, ten_bit.name):
        assert (folder / name).stat().st_size > 0, f"could not generate {name}"
    processed = {"good.mp4", "variable-rate.mp4", rotated.name, ten_bit.name, "ünïcode 日本 clip.mp4",
                 "dots..in..name.mp4"}
    # A playable video whose name holds a newline: skipped as an unsafe key (export prints one per line).
    shutil.copy(good, folder / "new\nline.mp4")
    skipped = {"truncated.mp4", "zero-bytes.mp4", "text-named.mp4", "audio-only.mp4", "new\nline.mp4"}
    return processed, skipped


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb for a naive reader."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    rows = zlib.compress(b"\0" * (1 + (width + 7) // 8) * 64, 9)  # a few rows; the rest is missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _image_corpus(folder: Path) -> tuple[set[str], set[str]]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def save(name: str, img: Image.Image, **kw: object) -> None:
        img.save(folder / name, **kw)

    noise = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    save("normal.jpg", Image.fromarray(noise))
    save("one-by-one.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    save("wide 20000x20.png", Image.fromarray(rng.integers(0, 256, size=(20, 20000, 3), dtype=np.uint8)))
    save("cmyk.jpg", Image.fromarray(noise).convert("CMYK"))
    gradient = (np.linspace(0, 65535, 128 * 96).reshape(96, 128)).astype(np.uint16)
    save("sixteen-bit.png", Image.fromarray(gradient))
    rgba = Image.fromarray(np.dstack([noise, np.full((96, 128), 128, np.uint8)]), "RGBA")
    save("alpha.png", rgba)
    save("ünïcode 日本.png", Image.fromarray(noise[::-1]))
    (folder / "bomb.png").write_bytes(_png_claiming(60_000, 60_000))
    (folder / "zero-bytes.png").write_bytes(b"")
    (folder / "text-named.jpg").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    processed = {"normal.jpg", "one-by-one.png", "wide 20000x20.png", "cmyk.jpg", "sixteen-bit.png", "alpha.png",
                 "ünïcode 日本.png"}
    skipped = {"bomb.png", "zero-bytes.png", "text-named.jpg", "truncated.jpg"}
    return processed, skipped


def _files_outside(root: Path, allowed: list[Path]) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)}


def _report(output: Path, tag: str) -> dict:
    return json.loads((output / "datapool" / "reports" / tag / "report.json").read_text())


def test_hostile_videos_are_processed_or_skipped_and_reported(cli, tmp_path: Path, dagster_home: Path) -> None:
    input_dir, output = tmp_path / "in", tmp_path / "out"
    processed, skipped = _video_corpus(input_dir)
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "hostile", "VIDEOS", str(input_dir), str(output))
    before = _files_outside(tmp_path, [output, dagster_home])

    result = cli("--datasets", str(yaml_path), "run", "hostile", "--n-samples", "30")

    assert result.code == 0, result.err
    state = DatapoolStore(LocalStorage(output)).load_state()
    assert state.size == 30 and state.samples["sample_id"].n_unique() == 30
    report = _report(output, state.tags[0])
    reasons = {item["key"]: item["reason"] for item in report["input"]["skipped"]}
    assert set(reasons) == skipped, reasons
    assert all(reason for reason in reasons.values())
    # Every decodable video contributed candidates (frames) to the run.
    frames = {row["raw_key"]: row["frames"] for row in state.processed.iter_rows(named=True)}
    assert {key for key, n in frames.items() if n > 0} == processed
    assert frames["variable-rate.mp4"] == 20
    # Selected frames of the rotated video are written upright (240 wide, 320 high).
    rotated = [s for s in state.samples["sample_id"].to_list() if s.startswith("frames/rotated 90.mp4/")]
    for sample in rotated:
        assert Image.open(output / sample).size == (240, 320)
    assert _files_outside(tmp_path, [output, dagster_home]) == before
    exported = cli("--datasets", str(yaml_path), "export", "hostile", "--tag", "initial-tag").out.splitlines()
    assert len(exported) == 30 and all((output / name).is_file() for name in exported)
    # The UI shows the skipped files and the picks as tables, and the samples' column schema.
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        embedded = instance.get_latest_materialization_event(dg.AssetKey(["hostile", "embeddings"]))
        table = embedded.asset_materialization.metadata["skipped_files"].value
        unsafe = {"new\nline.mp4"}  # never read: listed by raw_files, not by embeddings
        assert {r.data["key"] for r in table.records} == skipped - unsafe
        assert all(r.data["reason"] for r in table.records)
        raw = instance.get_latest_materialization_event(dg.AssetKey(["hostile", "raw_files"])).asset_materialization
        assert {r.data["key"] for r in raw.metadata["skipped_files"].value.records} == unsafe
        tag = instance.get_latest_materialization_event(dg.AssetKey(["hostile", "tag"])).asset_materialization
        picks = tag.metadata["picks"].value.records
        assert [r.data["pick_rank"] for r in picks] == list(range(len(picks))) and len(picks) == 25
        columns = [c.name for c in tag.metadata["dagster/column_schema"].value.columns]
        assert columns[:2] == ["sample_id", "raw_key"] and "embedding" in columns


def test_hostile_images_are_processed_or_skipped_and_reported(cli, tmp_path: Path, dagster_home: Path) -> None:
    input_dir, output = tmp_path / "in", tmp_path / "out"
    processed, skipped = _image_corpus(input_dir)
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "hostile-images", "IMAGES", str(input_dir),
                                    str(output), extra="    images_per_shard: 4\n")
    before = _files_outside(tmp_path, [output, dagster_home])

    result = cli("--datasets", str(yaml_path), "run", "hostile-images", "--proportion-samples", "1.0")

    assert result.code == 0, result.err
    state = DatapoolStore(LocalStorage(output)).load_state()
    assert set(state.samples["raw_key"].to_list()) == processed
    reasons = {item["key"]: item["reason"] for item in _report(output, state.tags[0])["input"]["skipped"]}
    assert set(reasons) == skipped, reasons
    assert "too many pixels" in reasons["bomb.png"]
    embeddings = np.stack(state.samples["embedding"].to_list())
    assert np.all(np.isfinite(embeddings)) and np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)
    assert _files_outside(tmp_path, [output, dagster_home]) == before


def test_object_keys_that_could_escape_are_skipped(
    cli, s3: Backend, tmp_path: Path, dagster_home: Path  # noqa: F811 - the s3 fixture
) -> None:
    """Bucket keys with `..`, a leading `/` or an empty segment never become paths in a local output."""
    bucket = s3.create_bucket()
    clip = make_video(tmp_path / "src" / "clip.mp4", "testsrc2", seconds=2, fps=10, size="320x240").read_bytes()
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint)
    hostile = ["../escape.mp4", "/leading-slash.mp4", "a//empty-segment.mp4", "./dot.mp4"]
    fine = ["ok.mp4", "with space/ünïcode 日本.mp4"]
    for key in hostile + fine:
        client.put_object(Bucket=bucket, Key=key, Body=clip)
    output = tmp_path / "sandbox" / "out"
    yaml_path = write_datasets_yaml(tmp_path / "datasets.yaml", "keys", "VIDEOS", f"s3://{bucket}", str(output))
    before = _files_outside(tmp_path, [output, dagster_home])

    result = cli("--datasets", str(yaml_path), "run", "keys", "--n-samples", "10")

    assert result.code == 0, result.err
    state = DatapoolStore(open_storage(str(output))).load_state()
    assert set(state.samples["raw_key"].to_list()) <= set(fine)
    assert set(state.processed.filter(state.processed["frames"] > 0)["raw_key"].to_list()) == set(fine)
    reasons = {item["key"]: item["reason"] for item in _report(output, state.tags[0])["input"]["skipped"]}
    assert set(reasons) == set(hostile), reasons
    assert _files_outside(tmp_path, [output, dagster_home]) == before
    assert not (tmp_path / "sandbox" / "escape.mp4").exists()
