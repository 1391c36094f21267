"""Safe photo loading: size limits before decoding, EXIF orientation, every common mode to 8-bit RGB.

A photo library holds anything: zero-byte files, half-copied JPEGs, text files named .jpg, CMYK scans,
16-bit PNGs, and now and then a decompression bomb. `load_rgb` turns each of these into either an
H x W x 3 uint8 RGB array or an `ImageRejected` whose `reason` is one line a user can act on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import stat
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# What Pillow's decoders raise on damaged data (PNG chunk errors are SyntaxError, zlib.error in text chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, TypeError)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees
_truncation_lock = threading.Lock()


_UNREADABLE = "cannot read "  # how every reason about access (not content) begins: worth retrying later


class ImageRejected(ValueError):
    """A file that cannot be used as a photo; `reason` is one human-readable line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def unreadable_reason(name: str, exc: OSError) -> str:
    """The reason for a file the system would not let us read (permission, I/O error): the photo itself may be
    fine, so the scan tries it again next time (`is_unreadable_reason`)."""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM):
        what = "permission denied"
    return f"{_UNREADABLE}{name}: {what[:1].lower()}{what[1:]}"


def is_unreadable_reason(reason: str | None) -> bool:
    """True for a skip that says the file could not be read (not that its content is bad)."""
    return bool(reason) and str(reason).startswith(_UNREADABLE)


def pixel_hash(image: np.ndarray) -> str:
    """SHA-256 (hex) of decoded pixels and their shape: equal for two files exactly when a detector would see
    the same image, whatever metadata (EXIF, comments, ratings) or file layout differs."""
    digest = hashlib.sha256(f"{image.shape}|{image.dtype}|".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def check_rgb_array(image: np.ndarray) -> None:
    """Raise ValueError unless `image` is H x W x 3 uint8 (what load_rgb returns and embedders take)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got shape {image.shape}, dtype {image.dtype}")


def load_rgb(path: str | os.PathLike[str], *, max_pixels: int, max_bytes: int) -> np.ndarray:
    """Decode a photo fully into an H x W x 3 uint8 RGB array, EXIF orientation applied.

    Checks, in order: the file is a readable regular file of 1..`max_bytes` bytes; the header's
    width x height is at most `max_pixels` (before any pixel is decoded); the whole file decodes
    (a truncated JPEG or PNG is rejected, never padded with grey). Animated files give their first
    frame, alpha is composited on white, 16-bit data is scaled (not clipped) to 8 bits.

    Raises `ImageRejected` for every problem with the file itself.
    """
    path = Path(path)
    _check_file(path, max_bytes)
    try:
        with open(path, "rb") as fh, _open_image(fh, path) as im:
            _check_pixels(im, max_pixels)
            with _strict_truncation():
                im.load()  # the whole first frame: truncation and corrupt data surface here
            rgb = _to_rgb(_oriented(im, path))
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"{path.name} is a decompression bomb: {exc}") from exc
    except MemoryError as exc:
        raise ImageRejected(f"{path.name} is too large to decode in memory") from exc
    except _DECODE_ERRORS as exc:
        raise _rejection(path, exc) from exc
    return rgb


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), read from the header only."""
    path = Path(path)
    try:
        with open(path, "rb") as fh, _open_image(fh, path) as im:
            width, height = im.size
            if _orientation(im) in _SWAPS_AXES:
                width, height = height, width
            return width, height
    except ImageRejected:
        raise
    except FileNotFoundError as exc:
        raise ImageRejected(f"{path} does not exist") from exc
    except _DECODE_ERRORS as exc:
        raise _rejection(path, exc) from exc


# --- checks -------------------------------------------------------------------------------------------


def _check_file(path: Path, max_bytes: int) -> None:
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise ImageRejected(f"{path} does not exist") from exc
    except OSError as exc:
        raise ImageRejected(unreadable_reason(path.name, exc)) from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageRejected(f"{path.name} is not a regular file")
    if info.st_size == 0:
        raise ImageRejected(f"{path.name} is an empty file (0 bytes)")
    if info.st_size > max_bytes:
        raise ImageRejected(
            f"{path.name} is {info.st_size:,} bytes, over the limit of {max_bytes:,} bytes (FACE_MAX_FILE_BYTES)"
        )


@contextlib.contextmanager
def _open_image(fh: io.BufferedReader, path: Path) -> Iterator[Image.Image]:
    """Image.open with its failures turned into reasons; nothing is decoded yet."""
    try:
        im = Image.open(fh)
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires at open() beyond 2 x Image.MAX_IMAGE_PIXELS; we leave that global alone.
        raise ImageRejected(f"{path.name} is a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(f"{path.name} is not an image (unrecognised or unsupported format)") from exc
    with im:
        yield im


def _check_pixels(im: Image.Image, max_pixels: int) -> None:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected(
            f"image is {width}x{height} = {width * height / 1e6:.1f} M pixels, over the limit of "
            f"{max_pixels / 1e6:.1f} M pixels (FACE_MAX_IMAGE_PIXELS)"
        )


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make sure a truncated file raises instead of loading half grey.

    Pillow reads ImageFile.LOAD_TRUNCATED_IMAGES as a process-wide flag with no per-image option. It is
    False unless some other library sets it, so the usual path costs nothing; only when it was switched
    on do we switch it off for the duration of one load, under a lock so concurrent loads restore it right.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _truncation_lock:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _rejection(path: Path, exc: BaseException) -> ImageRejected:
    """An OSError with an errno is the system refusing the read (permission, I/O error): retried later.
    Pillow's own decoding failures are OSErrors without one: the content is bad."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return ImageRejected(unreadable_reason(path.name, exc))
    return ImageRejected(_decode_reason(path, exc))


def _decode_reason(path: Path, exc: BaseException) -> str:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "truncated" in message.lower():
        return f"{path.name} is truncated (incomplete file): {message}"
    return f"{path.name} is corrupt or unreadable: {message}"


# --- orientation and modes ----------------------------------------------------------------------------


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except _DECODE_ERRORS:
        return 1


def _oriented(im: Image.Image, path: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS as exc:
        # A broken EXIF block is no reason to lose a good photo: keep the stored orientation.
        logger.debug("ignoring unreadable EXIF orientation in %s: %s", path, exc)
        return im


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode to H x W x 3 uint8 RGB."""
    mode = im.mode
    if mode == "RGB":
        rgb = np.asarray(im)
    elif mode.startswith("I;16") or mode in ("I", "F"):
        grey = _scale_to_uint8(np.asarray(im))
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif mode == "CMYK":
        rgb = np.asarray(_cmyk_to_rgb(im))
    elif (mode == "P" and "transparency" in im.info) or mode in _ALPHA_MODES:
        rgb = _composite_on_white(im.convert("RGBA"))
    else:  # L, 1, P, YCbCr, LAB, HSV: Pillow's own conversions are exact enough
        rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 16-bit (or wider) grey to 0..255 by the data type's range, so no detail is clipped away.

    Pillow gives a 16-bit PNG as I;16 (uint16) or as I (int32 holding 0..65535); both are divided by 257,
    which maps 0 -> 0 and 65535 -> 255 exactly. An I image whose values all fit in 0..255 is already 8-bit
    data; float (F) images are taken as 0..1 when they fit, else clipped to 0..255.
    """
    if values.dtype.kind == "f":
        top = float(np.nanmax(values)) if values.size else 0.0
        scaled = values * 255.0 if top <= 1.0 else values
        return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
    wide = values.astype(np.int64)
    if values.dtype == np.uint16 or (wide.size and wide.max() > 255):
        return np.clip((wide + 128) // 257, 0, 255).astype(np.uint8)
    return np.clip(wide, 0, 255).astype(np.uint8)


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """CMYK through the file's ICC profile when it has one (print CMYK is far from naive 255-C)."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            logger.debug("CMYK ICC conversion failed, using Pillow's plain conversion: %s", exc)
    return im.convert("RGB")


def _composite_on_white(rgba: Image.Image) -> np.ndarray:
    pixels = np.asarray(rgba).astype(np.float32)
    alpha = pixels[:, :, 3:4] / 255.0
    rgb = pixels[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
    return rgb.round().astype(np.uint8)
