"""Demo data and the demo walk-through: generated videos/images (ffmpeg test sources), local folders.

    python -m datapool_pipeline.demo          # the vendor page's full example, on local folders

Every video uses a different ffmpeg test source so the videos look clearly different.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable

# (lavfi source, extra options): visibly different content per video.
VIDEO_SOURCES = [
    ("testsrc2", ""),
    ("mandelbrot", ""),
    ("life", ":mold=10:ratio=0.1:death_color=#C83232:life_color=#00ff00"),
    ("cellauto", ":rule=110"),
    ("smptehdbars", ""),
    ("rgbtestsrc", ""),
    ("testsrc", ""),
]


def make_video(
    path: Path, source: str, *, seconds: float = 8.0, fps: int = 10, size: str = "320x240", extra: str = ""
) -> Path:
    """Encode an H.264 MP4 from an ffmpeg test source; a hue rotation keeps even still sources moving."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = f"{source}=size={size}:rate={fps}{extra}"
    if source in ("smptehdbars", "rgbtestsrc"):
        src = f"{source}=size={size}:rate={fps}"
    vf = "hue=h=t*40:s=1+0.5*sin(t),format=yuv420p"
    cmd = [
        ffmpeg_executable(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", src, "-t", str(seconds), "-vf", vf,
        "-c:v", "libx264", "-preset", "veryfast", "-g", str(fps * 2), "-pix_fmt", "yuv420p", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return path


def make_image(path: Path, source: str, t: float, size: str = "320x240") -> Path:
    """One frame of a test source at time t, as a still image (format from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        ffmpeg_executable(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"{source}=size={size}:rate=10",
        "-vf", f"trim=start={t},hue=h={int(t * 37) % 360}", "-frames:v", "1", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return path


def make_videos(folder: Path, names: list[str], first_source: int = 0, seconds: float = 8.0, fps: int = 10) -> None:
    for i, name in enumerate(names):
        source, extra = VIDEO_SOURCES[(first_source + i) % len(VIDEO_SOURCES)]
        make_video(folder / name, source, seconds=seconds, fps=fps, extra=extra)


DEMO_DATASETS_YAML = """\
# Demo datasets (written by `python -m datapool_pipeline.demo`).
datasets:
  videos-datapool:
    type: VIDEOS
    input: ./input/videos
    output: ./lightly/videos-datapool
    embedding:
      model: {model}
      pretrained: none        # seeded random weights: no download needed. Use e.g. laion2b_s34b_b79k for real data.
"""


def _datapool(*args: str) -> None:
    from datapool_pipeline.cli import main

    print(f"\n$ datapool {' '.join(args)}", flush=True)
    code = main(list(args))
    if code != 0:
        raise SystemExit(code)


def run_demo(root: Path, model: str) -> None:
    if root.exists():
        shutil.rmtree(root)
    videos = root / "input" / "videos"
    make_videos(videos, ["05009dc4-18640d99.mov", "0500a2a4-c5bd1bd8.mov", "0500c24a-5d4a8b36.mov"])
    # Images for the repository's datasets.yaml, whose images-datapool reads demo/input/images (UI tour).
    for i, source in enumerate(["testsrc2", "mandelbrot", "smptehdbars", "rgbtestsrc", "testsrc", "cellauto"] * 2):
        make_image(root / "input" / "images" / f"img_{i:03d}.jpg", source, t=(i * 0.7) % 9)
    datasets = root / "datasets.yaml"
    datasets.write_text(DEMO_DATASETS_YAML.format(model=model))
    ds = ["--datasets", str(datasets)]
    print(f"demo: 3 videos in {videos}; Dagster instance in $DAGSTER_HOME", flush=True)
    _datapool(*ds, "run", "videos-datapool", "--n-samples", "100")
    make_videos(videos, ["0501a510-789c0ba1.mov", "0501cda3-5c939ca7.mov"], first_source=3)
    print("\ndemo: added 2 more videos", flush=True)
    _datapool(*ds, "run", "videos-datapool", "--use-datapool", "--n-samples", "50")
    _datapool(*ds, "run", "videos-datapool", "--use-datapool", "--process-all", "--n-samples", "50")
    _datapool(*ds, "tags", "videos-datapool")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the datapool demo on generated videos.")
    parser.add_argument("--root", default="demo", help="folder for the demo's input and output (recreated)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights)")
    args = parser.parse_args(argv)
    run_demo(Path(args.root).resolve(), args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
