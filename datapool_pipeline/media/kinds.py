"""Which raw files are images, which are videos (by extension)."""

from __future__ import annotations

from typing import Literal

MediaKind = Literal["IMAGES", "VIDEOS", "OTHER"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"}
)
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp"}
)


def media_kind(key: str) -> MediaKind:
    name = key.rsplit("/", 1)[-1].lower()
    ext = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if ext in IMAGE_EXTENSIONS:
        return "IMAGES"
    if ext in VIDEO_EXTENSIONS:
        return "VIDEOS"
    return "OTHER"
