"""Image decoding: EXIF orientation applied, any mode converted to 8-bit RGB, memory bounded.

Before any pixel is decoded, the header (Pillow's `Image.open` is lazy) gives the size and mode; the peak
bytes of the decode-and-convert chain run below are computed from them, and an image above the bound is
refused with the reason (the caller skips it). Large images are decoded small where the format allows
(JPEG: DCT-domain `draft` scaling) and reduced right after loading otherwise (`Image.reduce`), so the
conversion to RGB runs at a size a little above the caller's target, never at full resolution.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import sys
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image

# Pillow raises DecompressionBombError above 2x this many pixels; such files are skipped as bad input.
Image.MAX_IMAGE_PIXELS = 100_000_000

MB = 1 << 20
DEFAULT_MAX_DECODED_MEGABYTES = 256
"""Default bound of one image's decode (datasets.yaml `images.max_decoded_megabytes`): fits a 4 GB worker
next to the loaded model (a `datapool run` peaks at about 1.7 GB with ViT-S-32; the default ViT-B-32 takes
0.7 GB more, so about 2.4 GB + 256 MB), and admits RGB/RGBA PNG, TIFF or BMP up to about 60 megapixels
(WebP about 30, 16-bit grey about 85); JPEGs are decoded at reduced size (baseline: any size under the pixel
limit; progressive: about 85 megapixels)."""

REDUCING_GAP = 3
"""A reduced decode keeps the shortest side at least this many times the caller's target size, so the final
bicubic resize is fed enough pixels (Pillow: from 3.0 the result is indistinguishable from a full-size
resize). Images whose shortest side is below 2 x REDUCING_GAP x target are decoded exactly as before."""

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_ROWS_BYTES = 8 * MB  # numpy work per chunk of rows when scaling 16/32-bit pixels to 8 bits


class ImageDecodeError(Exception):
    pass


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    """8-bit RGB, upright; reduced when the file is much larger than the target (see REDUCING_GAP)."""
    width: int
    """Full-resolution width, upright (after EXIF orientation)."""
    height: int


@dataclass(frozen=True)
class DecodePlan:
    """What decoding one image will do and cost, known from its header alone."""

    width: int
    height: int
    """Size stored in the file (before EXIF orientation)."""
    mode: str
    """Mode Pillow decodes into."""
    decode_size: tuple[int, int]
    """Pixels actually decoded: smaller than width x height after a JPEG draft."""
    reduce: int
    """Factor of Image.reduce right after loading (1: none)."""
    peak_bytes: int
    """Peak bytes of pixel buffers over the decode, reduce, RGB conversion and orientation chain."""

    @property
    def reduced_size(self) -> tuple[int, int]:
        w, h = self.decode_size
        return -(-w // self.reduce), -(-h // self.reduce)


def storage_bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel of Pillow's in-memory storage: 1 for 1/L/P, 2 for 16-bit grey, 4 for every other mode
    (RGB is stored as 4 bytes per pixel)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith(("I;16", "BGR;15", "BGR;16")):
        return 2
    if mode == "BGR;24":
        return 3
    return 4


def _reducible_mode(img: Image.Image) -> str:
    """The mode an image is converted to before Image.reduce (which rejects 1, P and 16-bit modes)."""
    if img.mode == "1":
        return "L"
    if img.mode == "P":
        return "RGBA" if "transparency" in img.info else "RGB"
    if img.mode.startswith("I;16"):
        return "L"
    return img.mode


def _rgb_chain_bytes_per_pixel(mode: str) -> int:
    """Peak bytes per pixel of to_rgb() on an image of `mode` (source included)."""
    if mode == "RGB":
        return 4
    if mode in _ALPHA_MODES:
        return 16  # source, RGBA copy, white background + composite, then RGB
    if mode in ("I", "F") or mode.startswith("I;16"):
        return storage_bytes_per_pixel(mode) + 1 + 4  # source, 8-bit grey (scaled by rows), RGB
    return storage_bytes_per_pixel(mode) + 4


def plan_decode(img: Image.Image, min_side: int | None = None) -> DecodePlan:
    """Plan the decode of a lazily opened image (nothing decoded yet): applies a JPEG draft when the image is
    much larger than `min_side`, chooses the reduce factor, and computes the peak bytes of the chain."""
    width, height = img.size
    n0 = width * height
    keep = REDUCING_GAP * min_side if min_side else 0
    if keep and img.format in ("JPEG", "MPO") and min(img.size) >= 2 * keep:
        factor = min(img.size) // keep
        img.draft(None, (-(-width // factor), -(-height // factor)))
    dw, dh = img.size
    reduce = max(1, min(dw, dh) // keep) if keep else 1
    n = dw * dh
    r = -(-dw // reduce) * -(-dh // reduce)
    s = storage_bytes_per_pixel(img.mode)
    pre = _reducible_mode(img)
    s_pre = storage_bytes_per_pixel(pre)
    load = n * s
    if img.format == "WEBP":
        load += n * 4  # libwebp decodes into its own buffer, then Pillow copies
    if img.format in ("JPEG", "MPO") and img.info.get("progressive"):
        load += _coefficient_bytes(img, n0)
    stages = [load]
    scaling = 6 * _ROWS_BYTES  # float64 rows and their temporaries in _grey_to_l
    if pre != img.mode:
        stages.append(n * (s + s_pre) + (scaling if img.mode.startswith("I;16") else 0))
    if reduce > 1:
        stages.append((n + r) * s_pre + (2 * _ROWS_BYTES if pre in ("LA", "RGBA") else 0))
    stages.append(r * _rgb_chain_bytes_per_pixel(pre) + (scaling if pre in ("I", "F") else 0))
    if _orientation(img, before_load=True) in _TRANSPOSE:
        stages.append(r * 8)  # RGB and its transposed copy
    return DecodePlan(width, height, img.mode, (dw, dh), reduce, max(stages))


def _coefficient_bytes(img: Image.Image, pixels: int) -> int:
    """libjpeg keeps every DCT coefficient (2 bytes) of a progressive JPEG, at full scale even when drafted:
    one per pixel per component, fewer for subsampled chroma."""
    layers = getattr(img, "layer", None) or [("", 1, 1, 0)] * len(img.getbands())
    h_max, v_max = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
    return int(2 * pixels * sum(layer[1] * layer[2] for layer in layers) / (h_max * v_max))


def _orientation(img: Image.Image, *, before_load: bool = False) -> int:
    """EXIF orientation (1..8). Before loading, a PNG whose eXIf chunk follows the pixels reads as 1
    (Pillow would load the image to find it)."""
    if before_load and img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: keep the pixels as stored
        return 1
    return value if isinstance(value, int) else 1


def load_image(
    data: bytes, *, min_side: int | None = None, max_decoded_megabytes: int | None = DEFAULT_MAX_DECODED_MEGABYTES
) -> DecodedImage:
    """Decode image bytes to an upright RGB image, or raise ImageDecodeError with the reason.

    min_side: the caller resizes the result so its shortest side is this (e.g. the model's input size); an
    image much larger is decoded at reduced size (shortest side still >= REDUCING_GAP x min_side).
    max_decoded_megabytes: refuse, from the header alone, an image whose decode would peak above this.
    """
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            plan = plan_decode(img, min_side)
            if max_decoded_megabytes is not None and plan.peak_bytes > max_decoded_megabytes * MB:
                raise ImageDecodeError(_too_large(plan, max_decoded_megabytes))
            img.load()
            orientation = _orientation(img)
            if _reducible_mode(img) != img.mode:
                img = _to_reducible(img)
            if plan.reduce > 1:
                hi = _grey_scale_max(img)
                img = _reduce(img, plan.reduce)
            else:
                hi = None
            rgb = to_rgb(img, hi=hi)
            del img
            if plan.peak_bytes >= _TRIM_ABOVE:
                _return_freed_memory()
            if orientation in _TRANSPOSE:
                rgb = rgb.transpose(_TRANSPOSE[orientation])
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too many pixels ({exc})") from None
    except Exception as exc:
        raise ImageDecodeError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    swap = orientation in (5, 6, 7, 8)
    return DecodedImage(rgb, plan.height if swap else plan.width, plan.width if swap else plan.height)


_TRIM_ABOVE = 64 * MB


def _return_freed_memory() -> None:
    """Hand the full-size buffers just freed back to the OS (glibc keeps freed 16 MB Pillow blocks in its heaps,
    one per thread, so decodes in the frames step, the embedding prefetch thread and the report would each keep
    the peak of the largest image)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only (not musl)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def decode_image(
    data: bytes, *, min_side: int | None = None, max_decoded_megabytes: int | None = DEFAULT_MAX_DECODED_MEGABYTES
) -> Image.Image:
    """Decode image bytes to an RGB PIL image, or raise ImageDecodeError with the reason (see load_image)."""
    return load_image(data, min_side=min_side, max_decoded_megabytes=max_decoded_megabytes).image


def _too_large(plan: DecodePlan, limit_mb: int) -> str:
    scaled = plan.decode_size != (plan.width, plan.height)
    drafted = f", decoded at {plan.decode_size[0]}x{plan.decode_size[1]}" if scaled else ""
    return (
        f"decoded size {plan.peak_bytes / MB:.0f} MB exceeds images.max_decoded_megabytes {limit_mb} "
        f"({plan.width}x{plan.height} {plan.mode}{drafted}; peak of decoding and converting to RGB): raise it "
        "in datasets.yaml to process such images"
    )


def _grey_scale_max(img: Image.Image) -> float | None:
    """The full-resolution scale of a 32-bit grey image (reduce averages, so its maximum could drop)."""
    if img.mode not in ("I", "F"):
        return None
    hi = img.getextrema()[1]
    return 65535.0 if hi > 255 else 255.0


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    """Image.reduce; LA/RGBA a band of rows at a time (Image.reduce premultiplies alpha on a full-size copy).
    Bands start at multiples of `factor`, so the result is the same as one reduce."""
    if img.mode not in ("LA", "RGBA"):
        return img.reduce(factor)
    w, h = img.size
    out = Image.new(img.mode, (-(-w // factor), -(-h // factor)))
    band = factor * max(1, _ROWS_BYTES // (4 * w * factor))
    for top in range(0, h, band):
        out.paste(img.crop((0, top, w, min(h, top + band))).reduce(factor), (0, top // factor))
    return out


def _to_reducible(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16"):
        return _grey_to_l(img, 65535.0)
    return img.convert(_reducible_mode(img))


def _grey_to_l(img: Image.Image, hi: float) -> Image.Image:
    """16/32-bit grey to 8-bit grey (x / hi * 255, rounded), a band of rows at a time."""
    w, h = img.size
    out = np.empty((h, w), np.uint8)
    step = max(1, _ROWS_BYTES // (8 * max(w, 1)))
    for top in range(0, h, step):
        rows = np.asarray(img.crop((0, top, w, min(h, top + step))), dtype=np.float64)
        out[top : top + len(rows)] = np.clip(rows / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def to_rgb(img: Image.Image, *, hi: float | None = None) -> Image.Image:
    """Any mode to 8-bit RGB: 16/32-bit grey scaled to 0..255 (by `hi`, or 65535 for 16-bit and 65535 or 255
    from the maximum for 32-bit), transparency composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        if hi is None:
            hi = 65535.0 if img.mode.startswith("I;16") or img.getextrema()[1] > 255 else 255.0
        return _grey_to_l(img, hi).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
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
