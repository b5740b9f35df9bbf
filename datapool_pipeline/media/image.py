"""Image decoding: EXIF orientation applied, any mode converted to 8-bit RGB."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# Pillow raises DecompressionBombError above 2x this many pixels; such files are skipped as bad input.
Image.MAX_IMAGE_PIXELS = 100_000_000


class ImageDecodeError(Exception):
    pass


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes to an RGB PIL image, or raise ImageDecodeError with the reason."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too many pixels ({exc})") from None
    except Exception as exc:
        raise ImageDecodeError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Shortest side to `size` (bicubic), then a centred size x size crop: uint8 HxWx3."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    resized = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
