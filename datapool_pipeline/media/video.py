"""Video frames streamed from ffmpeg: scaled to the model's input size inside ffmpeg, one pass,
no file per frame; and the few selected frames re-extracted at full resolution as PNG.

Every ffmpeg decode process of the package is started by `_run`; `count_decodes()` counts them per source
(tests and benchmarks: a run decodes each selected video at most twice, every other video once).
"""

from __future__ import annotations

import collections
import contextlib
import re
import subprocess
import threading
from collections.abc import Iterator

import ffmpeg
import numpy as np

from datapool_pipeline.media.ffmpeg_binary import ffmpeg_executable

_SHOWINFO_RE = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s+pts_time:\s*(-?[0-9.eE+-]+)")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The input's header as ffmpeg logs it: "Duration: 00:00:05.00," and "Stream #0:0...: Video: ..., 320x240 [".
_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_RESOLUTION_RE = re.compile(r",\s*(\d{1,5})x(\d{1,5})(?=[\s,\[]|$)")


class VideoDecodeError(Exception):
    pass


def _video_stream(
    source: str, fps: float | None, skip_duplicates: bool = False, scene_threshold: float | None = None
) -> ffmpeg.nodes.FilterableStream:
    """The decoded frames that count as samples, before any scaling (so that FrameStream and
    extract_frames_png number them identically): optional fps resampling, then optional dropping of
    near-duplicate consecutive frames (mpdecimate) and/or keeping only frames whose scene-change score
    exceeds a threshold (the first frame is always kept)."""
    stream = ffmpeg.input(source).video
    if fps:
        stream = stream.filter("fps", fps=fps)
    if skip_duplicates:
        stream = stream.filter("mpdecimate")
    if scene_threshold is not None:
        stream = stream.filter("select", f"eq(n,0)+gt(scene,{float(scene_threshold)!r})")
    return stream


_counters: list[collections.Counter[str]] = []
_counters_lock = threading.Lock()


@contextlib.contextmanager
def count_decodes() -> Iterator[collections.Counter[str]]:
    """Count the ffmpeg decode processes started while the block runs, per source (path or URL), from any
    thread. Nothing is counted (or kept) outside such a block."""
    counter: collections.Counter[str] = collections.Counter()
    with _counters_lock:
        _counters.append(counter)
    try:
        yield counter
    finally:
        with _counters_lock:
            _counters.remove(counter)


def _run(stream: ffmpeg.nodes.OutputStream, source: str) -> subprocess.Popen[bytes]:
    """Start one ffmpeg process decoding `source`: the only place the package starts a decode."""
    args = stream.global_args("-nostdin", "-hide_banner", "-loglevel", "info").compile(cmd=ffmpeg_executable())
    if _counters:
        with _counters_lock:
            for counter in _counters:
                counter[source] += 1
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class _StderrReader(threading.Thread):
    """Collects showinfo timestamps and the last lines of ffmpeg's log (for error messages)."""

    def __init__(self, pipe: object) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.timestamps: list[float] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=12)
        self.duration: float | None = None
        self.resolution: tuple[int, int] | None = None
        self._in_output = False

    def _header(self, line: str) -> None:
        """Duration and resolution of the input file (from the log's Input section, before Output)."""
        if line.startswith("Output #"):
            self._in_output = True
        if self._in_output:
            return
        if self.duration is None and (d := _DURATION_RE.search(line)):
            self.duration = int(d.group(1)) * 3600 + int(d.group(2)) * 60 + float(d.group(3))
        video = line.split("Video:", 1)[1] if "Stream #" in line and "Video:" in line else ""
        if self.resolution is None and (r := _RESOLUTION_RE.search(video)):
            self.resolution = (int(r.group(1)), int(r.group(2)))

    def run(self) -> None:
        for raw in iter(self.pipe.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode("utf-8", "replace").rstrip()
            if not self._in_output:
                self._header(line)
            match = _SHOWINFO_RE.search(line)
            if match and "showinfo" in line.lower():
                self.timestamps.append(float(match.group(3)))
            elif line and "showinfo" not in line.lower():
                self.tail.append(line)

    def reason(self) -> str:
        errors = [ln for ln in self.tail if "error" in ln.lower() or "invalid" in ln.lower()]
        text = (errors or list(self.tail) or ["ffmpeg failed"])[-1]
        return text.strip()[:300]


class FrameStream:
    """Iterate a video's frames as uint8 arrays of shape (size, size, 3).

    Shortest side scaled to `size` (bicubic) and centre-cropped, as open_clip's preprocessing does.
    After iteration `timestamps` holds each frame's presentation time in seconds, and `error`
    ffmpeg's reason if it stopped with a failure (frames yielded before it remain valid), and
    `duration` (s) and `width`/`height` of the input file as ffmpeg's log gives them (None if not).
    """

    def __init__(
        self,
        source: str,
        size: int,
        fps: float | None = None,
        *,
        skip_duplicates: bool = False,
        scene_threshold: float | None = None,
    ) -> None:
        self.source = source
        self.size = size
        self.fps = fps
        self.skip_duplicates = skip_duplicates
        self.scene_threshold = scene_threshold
        self.timestamps: list[float] = []
        self.error: str | None = None
        self.frames = 0
        self.duration: float | None = None
        self.width: int | None = None
        self.height: int | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        s = self.size
        stream = (
            _video_stream(self.source, self.fps, self.skip_duplicates, self.scene_threshold)
            .filter("scale", s, s, force_original_aspect_ratio="increase", flags="bicubic")
            .filter("crop", s, s)
            .filter("showinfo")
            .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
        )
        proc = _run(stream, self.source)
        reader = _StderrReader(proc.stderr)
        reader.start()
        frame_bytes = s * s * 3
        try:
            assert proc.stdout is not None
            while True:
                buf = proc.stdout.read(frame_bytes)
                if len(buf) < frame_bytes:
                    break
                self.frames += 1
                yield np.frombuffer(buf, dtype=np.uint8).reshape(s, s, 3)
        finally:
            if proc.poll() is None:
                proc.stdout.close()  # type: ignore[union-attr]
                proc.kill()
            returncode = proc.wait()
            reader.join(timeout=10)
            self.timestamps = reader.timestamps[: self.frames]
            self.duration = reader.duration
            if reader.resolution is not None:
                self.width, self.height = reader.resolution
            if returncode != 0 and self.frames == 0:
                self.error = reader.reason()
            elif returncode != 0:
                self.error = f"stopped after {self.frames} frames: {reader.reason()}"
            if len(self.timestamps) < self.frames:
                # Should not happen; keep the manifest aligned rather than guess.
                self.timestamps += [float("nan")] * (self.frames - len(self.timestamps))


# Longest select expression given to one ffmpeg process: the filter graph is one command-line argument, and
# Linux refuses an argument over 128 KiB. About 3,500 scattered picks (many more when consecutive) fit.
_MAX_SELECT_CHARS = 100_000


def _ranges(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct indices as inclusive runs of consecutive ones: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _select_expression(runs: list[tuple[int, int]]) -> str:
    """An ffmpeg expression true exactly for frame numbers n in the runs: a balanced binary search
    (`if(lt(n,m),left,right)`), so its nesting grows with log2 of the runs. ffmpeg's parser refuses deep
    expressions: a flat `eq(n,a)+eq(n,b)+...` fails ("Cannot allocate memory") above 100 terms."""
    if len(runs) == 1:
        a, b = runs[0]
        return f"eq(n,{a})" if a == b else f"between(n,{a},{b})"
    mid = len(runs) // 2
    return f"if(lt(n,{runs[mid][0]}),{_select_expression(runs[:mid])},{_select_expression(runs[mid:])})"


def _select_chunks(wanted: list[int]) -> list[list[int]]:
    """Sorted distinct indices split so each chunk's expression fits one ffmpeg argument: one chunk (one
    decode of the video) unless a video has thousands of scattered picks."""
    runs = _ranges(wanted)
    chunks: list[list[int]] = []
    size = 0
    for a, b in runs:
        # What one run adds: its leaf ("between(n,A,B)" or "eq(n,A)") and at most one "if(lt(n,A),...,...)".
        cost = len(f"if(lt(n,{a}),,)") + len(f"eq(n,{a})" if a == b else f"between(n,{a},{b})")
        if not chunks or size + cost > _MAX_SELECT_CHARS:
            chunks.append([])
            size = 0
        chunks[-1].extend(range(a, b + 1))
        size += cost
    return chunks


def extract_frames_png(
    source: str,
    indices: list[int],
    fps: float | None = None,
    *,
    skip_duplicates: bool = False,
    scene_threshold: float | None = None,
) -> dict[int, bytes]:
    """The given frame indices (as counted by FrameStream with the same options) as full-resolution PNGs.

    One ffmpeg pass per call (unless thousands of scattered picks need more than one select expression);
    it stops at the last selected frame. Only the selected frames are encoded, nothing is written to disk.
    """
    wanted = sorted(set(indices))
    result: dict[int, bytes] = {}
    for chunk in _select_chunks(wanted) if wanted else []:
        stream = (
            _video_stream(source, fps, skip_duplicates, scene_threshold)
            .filter("select", _select_expression(_ranges(chunk)))
            # -frames:v: ffmpeg stops after the last selected frame instead of decoding to the end.
            .output("pipe:", format="image2pipe", vcodec="png", fps_mode="passthrough", **{"frames:v": len(chunk)})
        )
        proc = _run(stream, source)
        reader = _StderrReader(proc.stderr)
        reader.start()
        assert proc.stdout is not None
        pngs = list(_split_pngs(proc.stdout))
        returncode = proc.wait()
        reader.join(timeout=10)
        if len(pngs) != len(chunk):
            raise VideoDecodeError(
                f"expected {len(chunk)} frames from {source}, ffmpeg gave {len(pngs)}"
                + (f" ({reader.reason()})" if returncode else "")
            )
        result.update(zip(chunk, pngs, strict=True))
    return result


def _split_pngs(pipe: object) -> Iterator[bytes]:
    """Split a stream of concatenated PNG files at their IEND chunks."""
    read = pipe.read  # type: ignore[attr-defined]
    while True:
        sig = read(8)
        if not sig:
            return
        if sig != _PNG_SIGNATURE:
            raise VideoDecodeError("ffmpeg produced a malformed PNG stream")
        parts = [sig]
        while True:
            header = read(8)
            if len(header) < 8:
                raise VideoDecodeError("ffmpeg PNG stream ended mid-image")
            length = int.from_bytes(header[:4], "big")
            body = read(length + 4)
            parts += [header, body]
            if header[4:8] == b"IEND":
                break
        yield b"".join(parts)
