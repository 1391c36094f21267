"""Seeded synthetic face embeddings with the statistics of a real photo library.

Used by the domain tests and the clustering benchmarks, never by the pipeline itself. The geometry mimics
an ArcFace-like space (cosine ~0.6-0.75 between photos of one person, ~0.05 between people) and the
identity sizes mimic a family photo library or LFW: most people appear once, many a handful of times,
a few hundreds of times. Each person has one to three "looks" (age, pose, glasses) so that one centroid
does not describe everybody equally well; a few pairs of people are look-alikes (siblings).
"""

from __future__ import annotations

import numpy as np

__all__ = ["identity_sizes", "synthetic_faces"]

_CHUNK = 16_384


def identity_sizes(
    n_faces: int, rng: np.random.Generator, *, zipf_exponent: float = 2.0, max_size: int | None = None
) -> np.ndarray:
    """Faces per person, drawn from a truncated Zipf law until they add up to exactly `n_faces`.

    With exponent 2 about 60% of the people appear once (LFW: 55%) and carry ~13% of the faces.
    Returns (n_people,) int64, summing to n_faces.
    """
    if n_faces < 1:
        raise ValueError(f"n_faces must be >= 1, got {n_faces!r}")
    if zipf_exponent <= 1.0:
        raise ValueError(f"zipf_exponent must be > 1, got {zipf_exponent!r}")
    cap = max_size if max_size is not None else max(20, n_faces // 40)
    sizes: list[np.ndarray] = []
    total = 0
    while total < n_faces:
        batch = rng.zipf(zipf_exponent, size=max(16, (n_faces - total) // 2))
        batch = np.minimum(batch, cap)
        sizes.append(batch)
        total += int(batch.sum())
    all_sizes = np.concatenate(sizes)
    cut = int(np.searchsorted(np.cumsum(all_sizes), n_faces))
    all_sizes = all_sizes[: cut + 1].copy()
    all_sizes[-1] -= int(all_sizes.sum()) - n_faces
    return all_sizes[all_sizes > 0].astype(np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_faces(
    n_faces: int,
    dim: int = 512,
    seed: int = 0,
    *,
    within_similarity: tuple[float, float] = (0.6, 0.75),
    between_similarity: float = 0.07,
    lookalike_fraction: float = 0.02,
    lookalike_similarity: float = 0.35,
    zipf_exponent: float = 2.0,
    max_identity_size: int | None = None,
    shuffle: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of `n_faces` photos of people, and who is who.

    Parameters
    ----------
    n_faces : int
        Number of faces.
    dim : int
        Embedding dimension (>= 16).
    seed : int
        Everything is a function of the seed.
    within_similarity : (low, high)
        Typical cosine between two photos of one person; each photo draws its own "sharpness" so that
        pairs spread over roughly this range (a few harder pairs fall below it, as in real data).
    between_similarity : float
        Cosine between two different people's centres (a direction all faces share); two photos of
        different people then sit at ~0.05.
    lookalike_fraction, lookalike_similarity
        That share of people is the look-alike of another person: their centres sit at this cosine.
    zipf_exponent, max_identity_size
        Identity sizes, see `identity_sizes`.
    shuffle : bool
        Shuffle the faces (otherwise the faces of one person are contiguous).

    Returns
    -------
    vectors : ndarray of shape (n_faces, dim), float32, L2-normalised
    identities : ndarray of shape (n_faces,), int64, person number (0..n_people-1)
    """
    if dim < 16:
        raise ValueError(f"dim must be >= 16, got {dim!r}")
    low, high = within_similarity
    if not 0.0 < low <= high < 1.0:
        raise ValueError(f"within_similarity must satisfy 0 < low <= high < 1, got {within_similarity!r}")
    if not 0.0 <= between_similarity < low:
        raise ValueError(
            f"between_similarity must be in [0, {low}) (below within_similarity), got {between_similarity!r}"
        )
    rng = np.random.default_rng(seed)
    sizes = identity_sizes(n_faces, rng, zipf_exponent=zipf_exponent, max_size=max_identity_size)
    n_people = len(sizes)

    # Person centres: a shared direction gives the between-people similarity.
    shared = _unit(rng.standard_normal(dim, dtype=np.float32))
    own = _unit(rng.standard_normal((n_people, dim), dtype=np.float32))
    centres = _unit(np.sqrt(between_similarity) * shared + np.sqrt(1 - between_similarity) * own)
    n_alike = int(round(lookalike_fraction * n_people / 2))
    if n_alike:
        a = rng.choice(n_people, size=2 * n_alike, replace=False)
        first, second = a[:n_alike], a[n_alike:]
        rho = lookalike_similarity
        centres[second] = _unit(np.sqrt(rho) * centres[first] + np.sqrt(1 - rho) * centres[second])

    identities = np.repeat(np.arange(n_people, dtype=np.int64), sizes)
    # One to three looks per person (more for people with many photos); each look is the centre moved
    # a little, so looks of one person sit at cosine ~0.85-0.95 to each other.
    n_looks = np.minimum(1 + (sizes >= 4) + (sizes >= 20), 3)
    look_of_face = (rng.random(n_faces) * n_looks[identities]).astype(np.int64)
    look_keys, first_face_of_look, look_index = np.unique(
        identities * 3 + look_of_face, return_index=True, return_inverse=True
    )
    look_shift = _unit(rng.standard_normal((len(look_keys), dim), dtype=np.float32))
    look_weight = rng.uniform(0.88, 0.97, size=len(look_keys)).astype(np.float32)
    looks = _unit(
        np.sqrt(look_weight)[:, None] * centres[identities[first_face_of_look]]
        + np.sqrt(1 - look_weight)[:, None] * look_shift
    )

    # A photo is its look plus independent noise: cos(a, b) ~ sqrt(w_a * w_b) * cos(look_a, look_b).
    # w ~ U(low, high) scaled up a little to make up for the looks' spread.
    w = rng.uniform(low, high, size=n_faces).astype(np.float32)
    w = np.clip(w / 0.93, 0.0, 0.995)
    vectors = np.empty((n_faces, dim), dtype=np.float32)
    for start in range(0, n_faces, _CHUNK):  # chunks keep the peak memory near the output's size
        part = slice(start, start + _CHUNK)
        noise = _unit(rng.standard_normal((len(w[part]), dim), dtype=np.float32))
        vectors[part] = _unit(
            np.sqrt(w[part])[:, None] * looks[look_index[part]] + np.sqrt(1 - w[part])[:, None] * noise
        )
    if shuffle:
        order = rng.permutation(n_faces)
        vectors, identities = vectors[order], identities[order]
    return vectors, identities


def nuisance_faces(
    n_people: int = 60, faces_per_person: int = 8, dim: int = 64, nuisance: float = 1.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Faces whose identity lives in a few directions, plus a large variation (pose, light) that every
    person shares in other directions: a space a learned projection can improve for unseen people too,
    because the nuisance directions are the same for everyone."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    k = dim // 4
    centres = rng.standard_normal((n_people, k)) @ basis[:, :k].T
    labels = np.repeat(np.arange(n_people), faces_per_person)
    x = centres[labels] + nuisance * rng.standard_normal((labels.size, k)) @ basis[:, k : 2 * k].T
    x += 0.3 * rng.standard_normal(x.shape)
    return x.astype(np.float32), labels
