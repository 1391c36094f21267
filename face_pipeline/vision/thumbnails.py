"""Square JPEG face thumbnails for the labelling UI."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from face_pipeline.vision.images import check_rgb_array

JPEG_QUALITY = 88


def square_crop_box(
    bbox: tuple[int, int, int, int], image_width: int, image_height: int, *, margin: float = 0.35
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a square around `bbox` (x, y, w, h) with `margin` x the box side
    added on each side, shifted to stay inside the image and shrunk only when the image is too small."""
    x, y, w, h = bbox
    side = round(max(w, h) * (1.0 + 2.0 * margin))
    side = max(1, min(side, image_width, image_height))
    centre_x, centre_y = x + w / 2.0, y + h / 2.0
    left = int(round(min(max(centre_x - side / 2.0, 0), image_width - side)))
    top = int(round(min(max(centre_y - side / 2.0, 0), image_height - side)))
    return left, top, left + side, top + side


def face_thumbnail(image: np.ndarray, bbox: tuple[int, int, int, int], *, size: int, margin: float = 0.35) -> bytes:
    """JPEG bytes of a `size` x `size` square around one face.

    `image`: H x W x 3 uint8 RGB, the same full-size oriented image the bbox (x, y, w, h) refers to.
    """
    check_rgb_array(image)
    if size < 1:
        raise ValueError(f"thumbnail size must be positive, got {size}")
    height, width = image.shape[:2]
    left, top, right, bottom = square_crop_box(bbox, width, height, margin=margin)
    crop = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right]))
    thumb = crop.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def save_thumbnail(
    image: np.ndarray,
    bbox: tuple[int, int, int, int],
    path: str | os.PathLike[str],
    *,
    size: int,
    margin: float = 0.35,
) -> Path:
    """Write `face_thumbnail(...)` to `path` atomically (readers never see half a file); returns `path`."""
    path = Path(path)
    data = face_thumbnail(image, bbox, size=size, margin=margin)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file sits beside the target so os.replace stays on one file system (atomic rename).
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; a web server serving thumbnails must read them
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
