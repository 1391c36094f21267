"""Which face of one detector is which face of another, on the same photos: boxes matched by overlap.

Used when a library moves to another face model (services/reembed.py): a matched face keeps its row, id and
every decision a user made on it.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

MIN_IOU = 0.3  # two models' boxes of one face overlap far more (dlib's box sits inside SCRFD's)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of paired boxes; a, b: (n, 4) x, y, width, height -> (n,) in [0, 1]."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    width = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    height = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_faces(
    old_images: np.ndarray,
    old_boxes: np.ndarray,
    new_images: np.ndarray,
    new_boxes: np.ndarray,
    *,
    min_iou: float = MIN_IOU,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (old row, new row) of faces on the same image: for each image, the one-to-one assignment with the
    largest total IoU among pairs overlapping by at least `min_iou` (Hungarian method).

    old_images (n,), old_boxes (n, 4), new_images (m,), new_boxes (m, 4); boxes x, y, width, height.
    Returns two (k,) int64 arrays of row indices, sorted by old row.
    """
    old_rows, new_rows = _same_image_pairs(np.asarray(old_images), np.asarray(new_images))
    iou = box_iou(np.asarray(old_boxes)[old_rows], np.asarray(new_boxes)[new_rows])
    keep = iou >= min_iou
    old_rows, new_rows, iou = old_rows[keep], new_rows[keep], iou[keep]
    # A pair whose two faces overlap nothing else is in the optimum as it is; only the rest need solving.
    alone = (np.bincount(old_rows, minlength=len(old_images))[old_rows] == 1) & (
        np.bincount(new_rows, minlength=len(new_images))[new_rows] == 1
    )
    chosen_old, chosen_new = [old_rows[alone]], [new_rows[alone]]
    tangled = np.flatnonzero(~alone)
    tangled_images = np.asarray(old_images)[old_rows[tangled]]
    for image in np.unique(tangled_images):  # few: photos where boxes of several faces overlap
        pairs = tangled[tangled_images == image]
        olds, row = np.unique(old_rows[pairs], return_inverse=True)
        news, col = np.unique(new_rows[pairs], return_inverse=True)
        matrix = np.zeros((olds.size, news.size))
        matrix[row, col] = iou[pairs]
        r, c = linear_sum_assignment(matrix, maximize=True)
        good = matrix[r, c] >= min_iou
        chosen_old.append(olds[r[good]])
        chosen_new.append(news[c[good]])
    old_match, new_match = np.concatenate(chosen_old).astype(np.int64), np.concatenate(chosen_new).astype(np.int64)
    order = np.argsort(old_match, kind="stable")
    return old_match[order], new_match[order]


def _same_image_pairs(old_images: np.ndarray, new_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (old row, new row) with the same image id, without a Python loop."""
    new_order = np.argsort(new_images, kind="stable")
    new_sorted = new_images[new_order]
    start = np.searchsorted(new_sorted, old_images, side="left")
    counts = np.searchsorted(new_sorted, old_images, side="right") - start
    old_rows = np.repeat(np.arange(len(old_images)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return old_rows, new_order[np.repeat(start, counts) + offsets]
