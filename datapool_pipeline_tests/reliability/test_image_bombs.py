"""Small files that decode huge (issue 15, item 7): the trial's two crafted 14000x14000 PNGs (16-bit grey and
RGBA, under 1 MB on disk, under Pillow's 200-megapixel limit) pushed a run to 6.8 GB. The decode's peak is now
computed from the header and bounded (datasets.yaml `images.max_decoded_megabytes`), and large images are
decoded at reduced size (JPEG draft, Image.reduce), so such files are skipped with the reason and a large
ordinary photo is still embedded.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datapool_pipeline.datasets import parse_datasets
from datapool_pipeline.demo import make_image
from datapool_pipeline.errors import ConfigError
from datapool_pipeline.media.image import (
    DEFAULT_MAX_DECODED_MEGABYTES,
    MB,
    ImageDecodeError,
    decode_image,
    load_image,
    plan_decode,
    resize_center_crop,
)
from datapool_pipeline_tests.helpers import add_images, write_datasets_yaml

SIDE = 14_000


def uniform_png(path: Path, width: int, height: int, *, bit_depth: int, color_type: int, pixel: bytes) -> Path:
    """A PNG of one colour, compressed row by row (never held decoded): tiny on disk, huge when decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\0" + pixel * width  # filter type 0, then the pixels
    packer = zlib.compressobj(9)
    idat = b"".join([*(packer.compress(row) for _ in range(height)), packer.flush()])
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trial's files: 14000x14000 16-bit grey (~0.4 MB) and RGBA (~0.8 MB)."""
    folder = tmp_path_factory.mktemp("crafted")
    return {
        "grey16.png": uniform_png(folder / "grey16.png", SIDE, SIDE, bit_depth=16, color_type=0, pixel=b"\x80\x00"),
        "rgba.png": uniform_png(folder / "rgba.png", SIDE, SIDE, bit_depth=8, color_type=6, pixel=b"\x80\x40\x20\xc0"),
    }


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8000x6000 JPEG (a large photo, 48 megapixels), made by ffmpeg in its own process."""
    return make_image(tmp_path_factory.mktemp("jpeg") / "large 8000x6000.jpg", "testsrc2", t=1.3, size="8000x6000")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # 196 Mpx: above the warning, under the error
def test_header_check_refuses_the_crafted_pngs_before_decoding(crafted: dict[str, Path]) -> None:
    for path in crafted.values():
        data = path.read_bytes()
        assert len(data) < 1 * MB
        started = time.monotonic()
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(data, min_side=224)
        assert time.monotonic() - started < 1.0, "refused from the header, without decoding"
        reason = str(caught.value)
        assert reason.startswith("decoded size ")
        assert f"exceeds images.max_decoded_megabytes {DEFAULT_MAX_DECODED_MEGABYTES}" in reason
        assert f"{SIDE}x{SIDE}" in reason, reason
    n = SIDE * SIDE
    grey = plan_decode(Image.open(crafted["grey16.png"]), 224)
    assert grey.mode == "I;16" and grey.reduce == SIDE // (3 * 224)
    # 2 bytes/pixel decoded plus the 8-bit grey it is scaled to before the reduce: 588 MB of buffers.
    assert n * 3 <= grey.peak_bytes <= n * 3 + 64 * MB
    rgba = plan_decode(Image.open(crafted["rgba.png"]), 224)
    assert rgba.mode == "RGBA" and n * 4 <= rgba.peak_bytes <= n * 4 * 1.01 + 32 * MB


def test_bound_and_reduce_on_a_smaller_16_bit_image(tmp_path: Path) -> None:
    """3000x3000 16-bit grey: 18 MB decoded, 27 MB with its 8-bit copy. Above a 10 MB bound it is refused;
    under 100 MB it is decoded and reduced right after loading (shortest side still >= 3 x 224)."""
    data = uniform_png(tmp_path / "g.png", 3000, 3000, bit_depth=16, color_type=0, pixel=b"\xff\xff").read_bytes()
    with pytest.raises(ImageDecodeError, match="exceeds images.max_decoded_megabytes 10"):
        decode_image(data, min_side=224, max_decoded_megabytes=10)
    decoded = load_image(data, min_side=224, max_decoded_megabytes=100)
    assert decoded.image.mode == "RGB" and decoded.image.size == (750, 750)
    assert (decoded.width, decoded.height) == (3000, 3000)
    assert np.all(np.asarray(decoded.image) == 255)


def test_ordinary_images_decode_exactly_as_at_full_resolution() -> None:
    """Below 2 x 3 x the target on the shortest side nothing is reduced: same pixels as before."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(900, 1300, 3), dtype=np.uint8)
    for img, fmt in [(Image.fromarray(noise), "JPEG"), (Image.fromarray(noise).convert("RGBA"), "PNG"),
                     (Image.fromarray(noise[..., 0].astype(np.uint16) * 257), "PNG")]:  # fmt: skip
        buf = io.BytesIO()
        img.save(buf, fmt)
        full = decode_image(buf.getvalue(), max_decoded_megabytes=None)
        assert np.array_equal(np.asarray(decode_image(buf.getvalue(), min_side=224)), np.asarray(full))


def test_large_jpeg_is_drafted_near_the_model_size(big_jpeg: Path) -> None:
    data = big_jpeg.read_bytes()
    plan = plan_decode(Image.open(io.BytesIO(data)), 224)
    assert plan.decode_size == (1000, 750) and plan.reduce == 1  # libjpeg scales by 1/8 while decoding
    assert plan.peak_bytes < 16 * MB
    decoded = load_image(data, min_side=224)
    assert decoded.image.size == (1000, 750) and (decoded.width, decoded.height) == (8000, 6000)
    full = decode_image(data, max_decoded_megabytes=None)
    assert full.size == (8000, 6000)
    ours = resize_center_crop(decoded.image, 224).astype(np.int16)
    reference = resize_center_crop(full, 224).astype(np.int16)
    assert np.abs(ours - reference).mean() < 1.0  # out of 255: the model sees the same picture


def test_progressive_jpeg_counts_the_coefficients_libjpeg_keeps() -> None:
    """A progressive JPEG is drafted too, but libjpeg buffers all its DCT coefficients (2 bytes each; 4:2:0
    chroma: 1.5 per pixel) at full scale; measured: 141 MB for an 8000x6000 one, estimated 140 MB."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8))
    baseline, progressive = io.BytesIO(), io.BytesIO()
    img.save(baseline, "JPEG")
    img.save(progressive, "JPEG", progressive=True)
    plain = plan_decode(Image.open(baseline), 224)
    prog = plan_decode(Image.open(progressive), 224)
    assert plain.decode_size == prog.decode_size == (1000, 750)
    assert prog.peak_bytes == plain.peak_bytes + 2000 * 1500 * 3


def test_images_bound_in_datasets_yaml(tmp_path: Path) -> None:
    def parse(images: object) -> object:
        body = {"type": "IMAGES", "input": "in", "output": "out", "images": images}
        return parse_datasets({"datasets": {"im": body}}, base_dir=tmp_path)["im"]

    assert parse(None).images.max_decoded_megabytes == DEFAULT_MAX_DECODED_MEGABYTES
    assert parse({"max_decoded_megabytes": 1024}).images.max_decoded_megabytes == 1024
    for bad in (0, -5, "lots", 1.5, True):
        with pytest.raises(ConfigError, match=r"datasets\.im\.images\.max_decoded_megabytes: must be a positive"):
            parse({"max_decoded_megabytes": bad})
    with pytest.raises(ConfigError, match=r"datasets\.im\.images\.[a-z_]+: unknown field"):
        parse({"max_megapixels": 10})
    with pytest.raises(ConfigError, match=r"datasets\.im\.images: expected a mapping"):
        parse(256)


# Runs the CLI as a child and prints the largest resident set of it and the step processes it waited for.
_MEASURE = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(proc.stdout + proc.stderr)
print(json.dumps({"code": proc.returncode,
                  "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}))
"""


def _run_measured(yaml_path: Path, dataset: str) -> tuple[int, int, str]:
    cli = "import sys; from datapool_pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", cli, "--datasets", str(yaml_path), "run", dataset, "--proportion-samples", "1.0"]
    done = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["code"], result["peak_mb"], done.stderr


@pytest.mark.slow
def test_run_skips_the_crafted_pngs_and_peak_memory_stays_bounded(
    crafted: dict[str, Path], big_jpeg: Path, tmp_path: Path, dagster_home: Path
) -> None:
    """A real `datapool run` in a subprocess, peak RSS measured: normal images alone, then the same images plus
    the two crafted PNGs and a 48-megapixel JPEG, with the default bound (skipped) and with a bound raised to
    1024 MB (decoded, reduced right after loading). Before the bound the crafted run peaked at 6.8 GB (6751 MB
    measured here, against 1703 MB for the normal images)."""
    normal_dir, bomb_dir = tmp_path / "normal", tmp_path / "bombs"
    add_images(normal_dir, 6)
    add_images(bomb_dir, 6)
    for name, path in crafted.items():
        (bomb_dir / name).symlink_to(path)
    (bomb_dir / big_jpeg.name).symlink_to(big_jpeg)
    normal_yaml = write_datasets_yaml(tmp_path / "normal.yaml", "normal", "IMAGES", str(normal_dir),
                                      str(tmp_path / "normal-out"))
    bomb_yaml = write_datasets_yaml(tmp_path / "bombs.yaml", "bombs", "IMAGES", str(bomb_dir),
                                    str(tmp_path / "bombs-out"))
    raised_yaml = write_datasets_yaml(tmp_path / "raised.yaml", "raised", "IMAGES", str(bomb_dir),
                                      str(tmp_path / "raised-out"), extra="    images: {max_decoded_megabytes: 1024}\n")

    code, baseline_mb, log = _run_measured(normal_yaml, "normal")
    assert code == 0, log
    code, peak_mb, log = _run_measured(bomb_yaml, "bombs")
    assert code == 0, log
    print(f"peak RSS: normal images {baseline_mb} MB, with the crafted files {peak_mb} MB")

    out = tmp_path / "bombs-out" / "datapool"
    (report_file,) = out.glob("reports/*/report.json")
    report = json.loads(report_file.read_text())
    reasons = {item["key"]: item["reason"] for item in report["input"]["skipped"]}
    assert set(reasons) == set(crafted), reasons
    for name in crafted:
        assert reasons[name].startswith("decoded size ") and "exceeds images.max_decoded_megabytes 256" in reasons[name]
    from datapool_pipeline.datapool import DatapoolStore
    from datapool_pipeline.storage import LocalStorage

    state = DatapoolStore(LocalStorage(tmp_path / "bombs-out")).load_state()
    assert big_jpeg.name in set(state.samples["raw_key"].to_list())  # drafted, embedded, selected
    # The crafted files are refused from their headers and the large JPEG is decoded at 1/8 scale (also for
    # the report's thumbnail), so the run peaks like the normal one (measured +13 MB). 150 MB covers noise and
    # would catch one full-size decode of the JPEG (192 MB), let alone the 5 GB the crafted files took.
    assert peak_mb < baseline_mb + 150, (baseline_mb, peak_mb)

    # Raised bound: both crafted files are decoded (estimated peaks 609 and 764 MB, measured alone 594 and
    # 767) and embedded; the run grows by about one such decode (measured +614 MB), within the bound.
    code, raised_mb, log = _run_measured(raised_yaml, "raised")
    assert code == 0, log
    print(f"peak RSS with images.max_decoded_megabytes 1024: {raised_mb} MB")
    raised = DatapoolStore(LocalStorage(tmp_path / "raised-out")).load_state()
    assert set(crafted) <= set(raised.samples["raw_key"].to_list())
    assert raised_mb < baseline_mb + 1024, (baseline_mb, raised_mb)
