"""Test videos for the benchmarks, generated with ffmpeg (no downloads)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable


def _encode(args: list[str], path: Path) -> Path:
    cmd = [ffmpeg_executable(), "-y", "-v", "error", *args, "-c:v", "libx264", "-preset", "veryfast",
           "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True)
    return path


def video_720p(path: Path, seconds: float, fps: int = 30) -> Path:
    """A 1280x720 H.264 video with motion (testsrc2)."""
    if not path.exists():
        _encode(["-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate={fps}:duration={seconds}"], path)
    return path


def video_with_static_segments(path: Path, segment_s: float, fps: int = 10) -> Path:
    """Alternating moving and frozen segments (a frozen segment repeats one frame), 640x360."""
    if path.exists():
        return path
    sources = ["testsrc2", "mandelbrot", "life=s=640x360:mold=10:r=10:ratio=0.1", "cellauto"]
    inputs: list[str] = []
    parts = []
    for i, src in enumerate(sources):
        spec = src if "=" in src else f"{src}=size=640x360:rate={fps}"
        inputs += ["-f", "lavfi", "-t", str(segment_s), "-i", spec]
        # moving part: 1/4 of the segment; frozen part: the rest (one frame held).
        parts.append(
            f"[{i}:v]scale=640:360,fps={fps},format=yuv420p,split[m{i}][f{i}];"
            f"[m{i}]trim=duration={segment_s / 4},setpts=PTS-STARTPTS[a{i}];"
            f"[f{i}]trim=start_frame={int(segment_s / 4 * fps)}:end_frame={int(segment_s / 4 * fps) + 1},"
            f"setpts=PTS-STARTPTS,tpad=stop_mode=clone:stop_duration={segment_s * 3 / 4},"
            f"trim=duration={segment_s * 3 / 4}[b{i}]"
        )
    concat = "".join(f"[a{i}][b{i}]" for i in range(len(sources)))
    graph = ";".join(parts) + f";{concat}concat=n={2 * len(sources)}:v=1:a=0,fps={fps}[out]"
    return _encode([*inputs, "-filter_complex", graph, "-map", "[out]"], path)


def video_from_source(path: Path, source: str, seconds: float, size: str = "1280x720", fps: int = 30) -> Path:
    """An H.264 video of an ffmpeg test source (`name` or `name=opt=v:...`, size and rate added here) with
    a slow hue rotation, so that even still sources (smptehdbars) change from frame to frame. Written to a
    temporary name first: an interrupted run never leaves a partial file behind to be reused."""
    if path.exists():
        return path
    name, _, options = source.partition("=")
    spec = f"{name}=size={size}:rate={fps}" + (f":{options}" if options else "")
    partial = path.with_name(f".partial-{path.name}")
    _encode(["-f", "lavfi", "-i", spec, "-t", str(seconds), "-vf", "hue=h=t*40:s=1+0.5*sin(t)"], partial)
    partial.rename(path)
    return path


def looped(clip: Path, path: Path, seconds: float) -> Path:
    """`clip` repeated to `seconds` without re-encoding (stream copy): a long video in well under a second.
    Decoding it costs what a long encode of the same content would; its content repeats every clip."""
    if not path.exists():
        partial = path.with_name(f".partial-{path.name}")
        subprocess.run([ffmpeg_executable(), "-y", "-v", "error", "-stream_loop", "-1", "-i", str(clip), "-t",
                        str(seconds), "-c", "copy", str(partial)], check=True)
        partial.rename(path)
    return path
