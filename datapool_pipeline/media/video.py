"""Video frames streamed from ffmpeg: scaled to the model's input size inside ffmpeg, one pass,
no file per frame; and the few selected frames re-extracted at full resolution as PNG.

Every ffmpeg decode process of the package is started by `_run`; `count_decodes()` counts them per source
(tests and benchmarks: a run decodes each selected video at most twice, every other video once).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import functools
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

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


def _count(source: str) -> None:
    if _counters:
        with _counters_lock:
            for counter in _counters:
                counter[source] += 1


def _run(stream: ffmpeg.nodes.OutputStream, source: str, *, count: bool = True) -> subprocess.Popen[bytes]:
    """Start one ffmpeg process decoding `source`: the only place the package starts a decode. It counts as one
    decode of `source` unless `count` is false (the seeks of extract_frames_png count once together)."""
    args = stream.global_args("-nostdin", "-hide_banner", "-loglevel", "info").compile(cmd=ffmpeg_executable())
    if count:
        _count(source)
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
    timestamps: dict[int, float] | None = None,
    seek: bool = True,
) -> dict[int, bytes]:
    """The given frame indices (as counted by FrameStream with the same options) as full-resolution PNGs.

    By seeking, when `timestamps` (index -> the manifest's `timestamp_s`) are given and each pick's source
    frame is provably known: ffprobe lists the packets' pts and keyframes (demux only), the sample index maps to
    a source frame by the frame options' rule (every frame, or vf_fps's rounding; not after mpdecimate / scene
    selection, whose choice depends on pixels), the mapping is checked against the recorded timestamps, and each
    seek's frames against their pts. Cost model (_seek_plan): a seek decodes from the keyframe at or before
    its first pick plus a process start (_SEEK_PROCESS_COST frames) and continues to later picks when that is
    cheaper than a new seek; the single pass decodes every frame up to the last pick; seeking is used when it
    is cheaper. The PNG is the same either way: the same decoded frame, converted by the same
    encoder (tests compare the pixels).

    Otherwise one ffmpeg pass (unless thousands of scattered picks need more than one select expression); it
    stops at the last selected frame. Only the selected frames are encoded, nothing is written to disk. Either
    way counts as one decode of `source` (count_decodes), unless a seek fails its check and the pass follows.
    """
    wanted = sorted(set(indices))
    if wanted and seek and timestamps is not None:
        seeked = _extract_by_seeking(source, wanted, timestamps, fps, skip_duplicates, scene_threshold)
        if seeked is not None:
            return seeked
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


@functools.cache
def ffprobe_executable() -> str | None:
    """ffprobe next to the ffmpeg in use, else on PATH; None (no seeking) when there is none (imageio-ffmpeg)."""
    sibling = os.path.join(os.path.dirname(ffmpeg_executable()), "ffprobe")
    return sibling if os.access(sibling, os.X_OK) else shutil.which("ffprobe")


# --- Seek-based extraction of picks --------------------------------------------------------------------------------
# Frames (in decoded-frame-equivalents) that starting one more ffmpeg process costs: its start-up, the seek, the
# container header; measured on 720p H.264 (~40 ms of start-up vs ~2 ms per decoded frame on one core).
_SEEK_PROCESS_COST = 20


@dataclass(frozen=True)
class _SourceFrames:
    """The video stream's frames in presentation order as ffmpeg's filter graph sees them: `pts` in time-base
    ticks after ffmpeg's shift by the file's start time, and whether each frame's packet is a keyframe."""

    time_base: Fraction
    pts: list[int]
    key: list[bool]

    def seconds(self, i: int) -> Fraction:
        return self.pts[i] * self.time_base


def _probe_frames(source: str) -> _SourceFrames | None:
    """The packets' timestamps and keyframe flags from ffprobe (demux only, no decode), or None when they do not
    identify frames unambiguously (a packet without pts, duplicate pts, or a failed probe)."""
    probe = ffprobe_executable()
    if probe is None:
        return None
    args = [probe, "-v", "error", "-select_streams", "v:0",
            "-show_entries", "stream=time_base:format=start_time:packet=pts,flags", "-of", "json", source]
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=300, check=True)
        info = json.loads(done.stdout)
        num, den = (int(x) for x in info["streams"][0]["time_base"].split("/"))
        packets = [(int(p["pts"]), "K" in p.get("flags", "")) for p in info["packets"]]
        start = info.get("format", {}).get("start_time")
    except (subprocess.SubprocessError, OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    if not packets or num <= 0 or den <= 0:
        return None
    time_base = Fraction(num, den)
    # ffmpeg (without -copyts) shifts every timestamp by the file's start time: -start_us rescaled to the stream's
    # time base (rounded to nearest, halves away from zero, as av_rescale_q).
    offset = 0 if start in (None, "N/A") else -_round_near(Fraction(start) / time_base)
    packets.sort()
    pts = [p + offset for p, _ in packets]
    if len(set(pts)) != len(pts):
        return None
    return _SourceFrames(time_base, pts, [k for _, k in packets])


def _round_near(x: Fraction) -> int:
    """Round half away from zero (AV_ROUND_NEAR_INF)."""
    n = abs(x.numerator) * 2 + x.denominator
    r = n // (2 * x.denominator)
    return r if x >= 0 else -r


def _source_positions(frames: _SourceFrames, indices: list[int], timestamps: list[float],
                      fps: float | None) -> list[int] | None:
    """The source frame (position in presentation order) each sample index is, or None if not provably known.

    Without `fps` sample n is the n-th decoded frame. With `fps` the mapping is vf_fps's rule (ffmpeg 4.3+,
    round=near): each input pts is rescaled to the output time base 1/fps (rounded to nearest), output slot s
    starts at the first frame's rescaled pts and takes the last input frame whose rescaled pts is <= s.
    Each result is checked against the sample's recorded timestamp (the manifest's `timestamp_s`, showinfo's
    pts_time after the filters): a mismatch or a timestamp too coarse to tell neighbours apart gives None.
    """
    n = len(frames.pts)
    out: list[int] = []
    if fps:
        rate = Fraction(fps).limit_denominator(1_001_000)  # av_parse_video_rate -> av_d2q(fps, 1001000)
        slots = [_round_near(frames.seconds(i) * rate) for i in range(n)]
        if any(b < a for a, b in itertools.pairwise(slots)):
            return None
        for index, stamp in zip(indices, timestamps, strict=True):
            slot = slots[0] + index
            pos = bisect.bisect_right(slots, slot) - 1
            if pos < 0 or not _stamp_matches(float(Fraction(slot) / rate), stamp, float(1 / rate)):
                return None
            out.append(pos)
        return out
    for index, stamp in zip(indices, timestamps, strict=True):
        if index >= n:
            return None
        gaps = [float(frames.seconds(j + 1) - frames.seconds(j)) for j in (index - 1, index) if 0 <= j < n - 1]
        if not gaps or not _stamp_matches(float(frames.seconds(index)), stamp, min(gaps)):
            return None
        out.append(index)
    return out


def _stamp_matches(expected: float, stamp: float, gap: float) -> bool:
    """showinfo prints pts_time with 6 significant digits: the stamp must be that close and that precision must
    separate neighbours `gap` seconds apart."""
    tolerance = max(abs(expected), 1e-3) * 1e-5 + 1e-9
    return math.isfinite(stamp) and tolerance < gap / 4 and abs(expected - stamp) <= tolerance


def _seek_plan(frames: _SourceFrames, positions: list[int]) -> tuple[list[list[int]], int, int]:
    """Group the picks' sorted distinct source positions into seeks, and the costs in decoded frames:
    (groups, seek cost, single-pass cost).

    A seek decodes from the keyframe at or before its first pick (presentation order: exact for closed GOPs)
    and costs a process start (_SEEK_PROCESS_COST); the next pick either continues the same decode (the frames
    in between) or starts a new seek, whichever costs less. The single pass decodes every frame up to the last
    pick."""
    keys = [i for i, k in enumerate(frames.key) if k]

    def from_key(pos: int) -> int:
        k = bisect.bisect_right(keys, pos) - 1
        return pos - (keys[k] if k >= 0 else 0) + 1 + _SEEK_PROCESS_COST

    groups: list[list[int]] = []
    cost = 0
    for pos in sorted(set(positions)):
        fresh = from_key(pos)
        if groups and pos - groups[-1][-1] <= fresh:
            cost += pos - groups[-1][-1]
            groups[-1].append(pos)
        else:
            cost += fresh
            groups.append([pos])
    return groups, cost, max(positions) + 1


def _seek_pngs(source: str, frames: _SourceFrames, group: list[int]) -> dict[int, bytes] | None:
    """The source frames at the sorted positions `group` as full-resolution PNGs, from one accurate input seek
    (`-ss` before `-i`: ffmpeg seeks to a keyframe before the seek time, decodes from there and drops frames
    before it) to halfway between the first and the frame before it; the others by their distance to the first
    in presentation order (select over n). Each frame ffmpeg gives is checked by its pts (showinfo, relative to
    the seek time); None when one is not the expected frame."""
    t0 = frames.seconds(group[0])
    before = frames.seconds(group[0] - 1) if group[0] > 0 else t0 - 1
    seek = Fraction(f"{float(max((before + t0) / 2, Fraction(0))):.6f}")
    stream = ffmpeg.input(source, ss=f"{float(seek):.6f}").video
    if len(group) > 1:
        stream = stream.filter("select", _select_expression(_ranges([p - group[0] for p in group])))
    stream = stream.filter("showinfo").output(
        "pipe:", format="image2pipe", vcodec="png", fps_mode="passthrough", **{"frames:v": len(group)})
    proc = _run(stream, source, count=False)
    reader = _StderrReader(proc.stderr)
    reader.start()
    assert proc.stdout is not None
    pngs = list(_split_pngs(proc.stdout))
    proc.wait()
    reader.join(timeout=10)
    if len(pngs) != len(group) or len(reader.timestamps) < len(group):
        return None
    for pos, stamp in zip(group, reader.timestamps, strict=False):
        t = frames.seconds(pos)
        gaps = [frames.seconds(j + 1) - frames.seconds(j) for j in (pos - 1, pos) if 0 <= j < len(frames.pts) - 1]
        if abs(stamp + float(seek) - float(t)) > float(min(gaps, default=Fraction(1))) / 4:
            return None
    return dict(zip(group, pngs, strict=True))


def _extract_by_seeking(source: str, wanted: list[int], timestamps: dict[int, float], fps: float | None,
                        skip_duplicates: bool, scene_threshold: float | None) -> dict[int, bytes] | None:
    """The picks by seeking when that is provably the same frame and cheaper, else None (see
    extract_frames_png)."""
    if skip_duplicates or scene_threshold is not None or any(i not in timestamps for i in wanted):
        return None  # which source frames mpdecimate / scene kept is not recorded: single pass
    frames = _probe_frames(source)
    if frames is None:
        return None
    positions = _source_positions(frames, wanted, [timestamps[i] for i in wanted], fps)
    if positions is None:
        return None
    groups, seek_cost, pass_cost = _seek_plan(frames, positions)
    if seek_cost >= pass_cost:
        return None
    _count(source)  # the seeks together are the commit's one (partial) decode of the video
    by_position: dict[int, bytes] = {}
    for group in groups:
        pngs = _seek_pngs(source, frames, group)
        if pngs is None:
            return None
        by_position.update(pngs)
    return {index: by_position[pos] for index, pos in zip(wanted, positions, strict=True)}


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
