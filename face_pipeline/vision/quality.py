"""A 0..1 face-quality figure shared by every embedder, so faces from either model rank the same way."""

from __future__ import annotations

import numpy as np
from PIL import Image

# A face this many pixels across (the side of its box) gets the full size score: 112 px is the input
# side of ArcFace crops and close to dlib's 150 px chip, so larger faces add no detail to the vector.
FULL_SIZE_PX = 112
# Variance of the Laplacian (on a 112 px grey crop) at which the sharpness score is one half. Measured
# on lfw-mini faces: 1st-99th percentile 18-235, median 80; a Gaussian blur of sigma 2 gives 4-13.
SHARPNESS_HALF = 50.0
_CROP_SIDE = 112


def face_quality(image: np.ndarray, bbox: tuple[int, int, int, int]) -> float:
    """Quality of one face in 0..1: sqrt(size_score * sharpness_score), higher is better.

    - size_score = min(1, side / 112), side = the shorter side of the box in full-size pixels;
    - sharpness_score = v / (v + 50), v = variance of the 4-neighbour Laplacian of the grey face crop
      resized to 112 x 112 (resizing first makes v comparable between small and large faces).

    The geometric mean makes a face poor when either figure is poor. `image`: H x W x 3 uint8 RGB;
    `bbox`: (x, y, width, height) in the image's pixels.
    """
    x, y, w, h = bbox
    side = min(w, h)
    if side <= 0:
        return 0.0
    size_score = min(1.0, side / FULL_SIZE_PX)
    crop = image[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)]
    if crop.size == 0:
        return 0.0
    v = laplacian_variance(crop)
    sharpness_score = v / (v + SHARPNESS_HALF)
    return float(np.sqrt(size_score * sharpness_score))


def laplacian_variance(crop: np.ndarray) -> float:
    """Variance of the Laplacian of an RGB crop, after converting to grey and resizing to 112 x 112."""
    grey = Image.fromarray(np.ascontiguousarray(crop)).convert("L")
    grey = grey.resize((_CROP_SIDE, _CROP_SIDE), Image.Resampling.BILINEAR)
    g = np.asarray(grey, dtype=np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())
