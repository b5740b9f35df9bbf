"""Find an ffmpeg executable: $DATAPOOL_FFMPEG, the system ffmpeg, or the one imageio-ffmpeg ships."""

from __future__ import annotations

import functools
import os
import shutil


@functools.cache
def ffmpeg_executable() -> str:
    override = os.environ.get("DATAPOOL_FFMPEG")
    if override:
        return override
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - imageio-ffmpeg is a dependency
        raise RuntimeError("no ffmpeg found: install ffmpeg or the imageio-ffmpeg package") from None
    return imageio_ffmpeg.get_ffmpeg_exe()
