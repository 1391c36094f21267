"""Face thumbnails: a square around the face with margin, inside the photo, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_pipeline.vision.thumbnails import face_thumbnail, save_thumbnail, square_crop_box


def test_square_has_the_margin_and_stays_inside_the_photo() -> None:
    assert square_crop_box((100, 100, 50, 50), 400, 300, margin=0.5) == (75, 75, 175, 175)
    # A face at the corner: the square slides inward rather than leaving the photo.
    assert square_crop_box((0, 0, 50, 50), 400, 300, margin=0.5) == (0, 0, 100, 100)
    assert square_crop_box((360, 260, 40, 40), 400, 300, margin=0.5) == (320, 220, 400, 300)
    # A face larger than the photo allows: the square shrinks to the short side.
    assert square_crop_box((0, 0, 300, 280), 400, 300, margin=0.35) == (0, 0, 300, 300)


def test_thumbnail_is_a_jpeg_of_the_requested_size_showing_the_face() -> None:
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    image[100:150, 200:250] = (250, 20, 20)  # the "face"
    data = face_thumbnail(image, (200, 100, 50, 50), size=64, margin=0.35)
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG" and thumb.size == (64, 64)
    centre = np.asarray(thumb.convert("RGB"))[24:40, 24:40].mean(axis=(0, 1))
    assert centre[0] > 200 and centre[1] < 60


def test_save_thumbnail_writes_atomically_and_replaces(tmp_path: Path) -> None:
    image = np.full((120, 160, 3), 200, dtype=np.uint8)
    target = tmp_path / "thumbs" / "007" / "7.jpg"
    assert save_thumbnail(image, (40, 30, 50, 50), target, size=32) == target
    save_thumbnail(image, (40, 30, 50, 50), target, size=48)  # a second write replaces the first
    assert Image.open(target).size == (48, 48)
    assert [p.name for p in target.parent.iterdir()] == ["7.jpg"]  # no temporary file left behind


def test_thumbnail_refuses_non_rgb_arrays() -> None:
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        face_thumbnail(np.zeros((10, 10), dtype=np.uint8), (0, 0, 5, 5), size=8)
