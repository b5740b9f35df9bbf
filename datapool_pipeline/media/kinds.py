"""Which raw files are images, which are videos (by extension), and which keys are unsafe to use."""

from __future__ import annotations

from typing import Literal

from datapool_pipeline.storage.base import is_safe_key

MediaKind = Literal["IMAGES", "VIDEOS", "OTHER", "UNSAFE_KEY", "NOT_REGULAR_FILE"]
UNSAFE_KEY_REASON = (
    "unsafe key (a '..' or '.' segment, an empty segment, a leading '/' or a control character such as a "
    "newline): never used as a path"
)
NOT_REGULAR_FILE = "NOT_REGULAR_FILE"
"""The kind of a local folder entry that is not a regular file (storage/local.py `not_regular`)."""
NOT_REGULAR_FILE_REASON = "not a regular file (a named pipe, socket or device): never opened"

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"}
)
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp"}
)


def media_kind(key: str) -> MediaKind:
    """IMAGES / VIDEOS by extension, OTHER, or UNSAFE_KEY for a bucket key that could escape a folder
    (`../x.mp4`, `/x.mp4`, `a//x.mp4`): such objects are skipped and reported, never read or written."""
    if not is_safe_key(key):
        return "UNSAFE_KEY"
    name = key.rsplit("/", 1)[-1].lower()
    ext = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if ext in IMAGE_EXTENSIONS:
        return "IMAGES"
    if ext in VIDEO_EXTENSIONS:
        return "VIDEOS"
    return "OTHER"
