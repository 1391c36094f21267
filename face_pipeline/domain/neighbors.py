"""k-nearest-neighbour graphs of L2-normalised face vectors, without an n x n matrix.

Two searches, both in float32 torch on the CPU (numpy's float64 BLAS segfaults on large products here):

- exact: the vectors against themselves in row chunks, `torch.topk` per chunk. O(n^2 d); right for a few
  thousand faces.
- ivf: an inverted file, as in FAISS's IVF-Flat. k-means on the top 64 principal components (of a
  sample) splits the faces into ~4 sqrt(n) lists; the faces of a list are compared, in the full
  dimension, with the faces of the list and of its nearest lists, up to `n_probe` average lists' worth:
  one matrix product per list. O(n^1.5 d). Faces of one person are close together, so they share lists;
  on 20K synthetic faces 94-97% of the neighbours above the clustering threshold are found, and on
  lfw-dev clustering quality drops by 0.01 BCubed F against the exact graph.

The result is a `NeighborGraph`: per face its k most similar other faces (cosine), best first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["MISSING", "NeighborGraph", "knn_graph"]

MISSING = -1  # neighbour index where fewer than k neighbours were found

# n * n * d up to which the search is exhaustive: 14K faces of 512-d (~3 s on one core), 28K of 128-d. The
# inverted file loses the weak links that hold ArcFace's small groups together: on lfw-dev (buffalo_s, 5K
# faces) it found 97% of the edges above cosine 0.4 and the grouping lost 0.03 BCubed F against exact.
_EXACT_MAX_WORK = 1e11
_CHUNK_ELEMENTS = 1 << 22  # 4M float32 = 16 MB per block of similarities
_COARSE_DIM = 64  # k-means runs on this many principal components (32: faster, lower recall)


@dataclass(frozen=True)
class NeighborGraph:
    """Directed k-NN graph.

    indices : (n, k) int64, neighbour face indices, best first; `MISSING` where fewer were found
    similarities : (n, k) float32, cosine similarities aligned with `indices`; -inf where missing
    exact : whether the search was exhaustive
    """

    indices: np.ndarray
    similarities: np.ndarray
    exact: bool

    @property
    def n_neighbors(self) -> int:
        return int(self.indices.shape[1])

    def to_sparse(self, min_similarity: float = -np.inf, *, mutual: bool = False) -> sp.csr_matrix:
        """Symmetric sparse matrix of cosine similarities of the kept edges, (n, n) float32 CSR.

        An edge is kept when its similarity >= `min_similarity`, and, with `mutual`, only when each face is
        among the other's k nearest neighbours. Zero similarities are stored as a tiny positive value so
        that no kept edge disappears from the sparse structure.
        """
        n, k = self.indices.shape
        rows = np.repeat(np.arange(n, dtype=np.int64), k)
        cols = self.indices.ravel()
        sims = self.similarities.ravel()
        keep = (cols != MISSING) & (sims >= min_similarity)
        rows, cols, sims = rows[keep], cols[keep], sims[keep]
        sims = np.where(sims == 0, np.float32(1e-12), sims).astype(np.float32)
        directed = sp.csr_matrix((sims, (rows, cols)), shape=(n, n))
        if mutual:
            return directed.minimum(directed.T).tocsr()
        return directed.maximum(directed.T).tocsr()


@contextmanager
def _torch_threads(n_threads: int | None) -> Iterator[None]:
    if n_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _as_tensor(vectors: np.ndarray) -> torch.Tensor:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (n, d), got shape {vectors.shape!r}")
    if vectors.dtype != np.float32:
        vectors = vectors.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(vectors))


def knn_graph(
    vectors: np.ndarray,
    n_neighbors: int = 15,
    *,
    method: Literal["auto", "exact", "ivf"] = "auto",
    n_lists: int | None = None,
    n_probe: int = 8,
    seed: int = 0,
    n_threads: int | None = 1,
) -> NeighborGraph:
    """The `n_neighbors` most similar other faces of every face.

    Parameters
    ----------
    vectors : ndarray of shape (n, d)
        L2-normalised embeddings (cosine = dot product); cast to float32.
    n_neighbors : int
        k, not counting the face itself; capped at n - 1.
    method : 'auto', 'exact' or 'ivf'
        'auto' searches exhaustively while n * n * d <= 1e11 (14K faces of 512-d, 28K of 128-d) and
        uses the inverted file above.
    n_lists : int, optional
        Inverted-file lists; default 4 * sqrt(n).
    n_probe : int
        Lists searched per face; more is slower and closer to exact.
    seed : int
        Seeds the k-means sample and initialisation; the result is deterministic for a given seed.
    n_threads : int or None
        torch threads during the search (restored afterwards); None keeps torch's setting. One by default:
        the search is many small products, and on a shared 2-core machine two threads waiting on each
        other took 18 s at 50K faces where one thread took 2.8 s.

    Returns
    -------
    NeighborGraph with arrays of shape (n, min(n_neighbors, n - 1)).
    """
    if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    if method not in ("auto", "exact", "ivf"):
        raise ValueError(f"method must be 'auto', 'exact' or 'ivf', got {method!r}")
    if n_probe < 1:
        raise ValueError(f"n_probe must be >= 1, got {n_probe!r}")
    if n_threads is not None and n_threads < 1:
        raise ValueError(f"n_threads must be >= 1 or None, got {n_threads!r}")
    x = _as_tensor(vectors)
    n, d = x.shape
    k = min(int(n_neighbors), max(n - 1, 0))
    if k == 0:
        return NeighborGraph(np.empty((n, 0), np.int64), np.empty((n, 0), np.float32), exact=True)
    if method == "auto":
        method = "exact" if float(n) * n * d <= _EXACT_MAX_WORK else "ivf"
    with torch.inference_mode(), _torch_threads(n_threads):
        if method == "exact":
            sims, idx = _exact_search(x, k)
            return NeighborGraph(idx.numpy(), sims.numpy(), exact=True)
        lists = n_lists if n_lists is not None else max(1, int(round(4 * math.sqrt(n))))
        if lists < 1:
            raise ValueError(f"n_lists must be >= 1, got {n_lists!r}")
        sims, idx = _ivf_search(x, k, n_lists=min(lists, n), n_probe=n_probe, seed=seed)
        return NeighborGraph(idx.numpy(), sims.numpy(), exact=False)


def _exact_search(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    rows = max(1, _CHUNK_ELEMENTS // n)
    out_s = torch.empty((n, k), dtype=torch.float32)
    out_i = torch.empty((n, k), dtype=torch.int64)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = x[start:stop] @ x.T
        block[torch.arange(stop - start), torch.arange(start, stop)] = -torch.inf  # not its own neighbour
        s, i = torch.topk(block, k, dim=1)
        out_s[start:stop], out_i[start:stop] = s, i
    return out_s, out_i


def _pca_basis(x: torch.Tensor, dim: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and the top `dim` principal axes (d, dim) of a sample of at most 20K rows."""
    n = x.shape[0]
    sample = x[torch.randperm(n, generator=generator)[:20_000]] if n > 20_000 else x
    mean = sample.mean(0)
    centred = sample - mean
    cov = (centred.T @ centred).numpy().astype(np.float64) / max(1, len(sample) - 1)  # (d, d): small
    _, vecs = np.linalg.eigh(cov)
    return mean, torch.from_numpy(np.ascontiguousarray(vecs[:, ::-1][:, :dim], dtype=np.float32))


def _kmeans(z: torch.Tensor, n_clusters: int, generator: torch.Generator, n_iter: int = 8) -> torch.Tensor:
    """Lloyd's k-means on a sample of z (rows), random initialisation; returns centroids (c, dz).

    Lists only need to be roughly balanced and local, so a sample of 16 points per list and a few
    iterations are enough (FAISS samples 39-256 per list for its far larger lists).
    """
    n = z.shape[0]
    sample = z[torch.randperm(n, generator=generator)[: min(n, 16 * n_clusters)]]
    centroids = sample[torch.randperm(len(sample), generator=generator)[:n_clusters]].clone()
    for _ in range(n_iter):
        nearest = _nearest_centroids(sample, centroids, 1)[:, 0]
        sums = torch.zeros_like(centroids).index_add_(0, nearest, sample)
        counts = torch.bincount(nearest, minlength=n_clusters)
        empty = counts == 0
        centroids = sums / counts.clamp(min=1).unsqueeze(1).float()
        if empty.any():  # restart empty clusters on random sample points
            pick = torch.randint(len(sample), (int(empty.sum()),), generator=generator)
            centroids[empty] = sample[pick]
    return centroids


def _nearest_centroids(z: torch.Tensor, centroids: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (rows, n) of the n nearest centroids (euclidean) of each row of z, in row chunks."""
    half_norms = 0.5 * (centroids * centroids).sum(1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, len(centroids)))
    out = torch.empty((z.shape[0], n), dtype=torch.int64)
    for start in range(0, z.shape[0], rows):
        score = z[start : start + rows] @ centroids.T - half_norms
        out[start : start + rows] = torch.topk(score, n, dim=1).indices
    return out


def _probe_pools(centroids: torch.Tensor, sizes: np.ndarray, n_probe: int) -> list[list[int]]:
    """For each list, the lists its faces are compared with: itself, then the nearest lists (by centroid)
    until the pool holds `n_probe` average lists' worth of faces. A big list (one person photographed a
    thousand times) then needs no other list, which keeps the cost near n * n_probe * (n / n_lists) * d
    however uneven the lists are.
    """
    n_lists = len(centroids)
    budget = n_probe * sizes.sum() / n_lists
    ranked = _nearest_centroids(centroids, centroids, min(4 * n_probe, n_lists)).tolist()
    pools = []
    for j, row in enumerate(ranked):  # a loop over lists
        pool, total = [j], int(sizes[j])
        for other in row:
            if total >= budget:
                break
            if other != j:
                pool.append(other)
                total += int(sizes[other])
        pools.append(pool)
    return pools


def _ivf_search(x: torch.Tensor, k: int, *, n_lists: int, n_probe: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = x.shape
    generator = torch.Generator().manual_seed(seed)
    mean, basis = _pca_basis(x, min(_COARSE_DIM, d), generator)
    z = x @ basis - mean @ basis  # centred projection without a centred copy of x
    centroids = _kmeans(z, n_lists, generator)
    home = _nearest_centroids(z, centroids, 1)[:, 0]
    del z
    # Faces numbered by list (position in `order`), so that every list is a contiguous range: one matrix
    # product per list. Rows are gathered per list rather than copying all vectors in list order.
    order = torch.argsort(home, stable=True)
    bounds = torch.searchsorted(home[order], torch.arange(n_lists + 1)).tolist()
    pools = _probe_pools(centroids, np.diff(np.asarray(bounds)), n_probe)
    best_s = torch.full((n, k), -torch.inf, dtype=torch.float32)
    best_i = torch.full((n, k), MISSING, dtype=torch.int64)
    for j in range(n_lists):  # a loop over lists
        a, b = bounds[j], bounds[j + 1]
        if a == b:
            continue
        candidates = torch.cat([torch.arange(bounds[p], bounds[p + 1]) for p in pools[j]])
        kk = min(k, len(candidates) - 1)
        if kk < 1:
            continue
        pool = x[order[candidates]]
        rows = max(1, _CHUNK_ELEMENTS // len(candidates))
        for start in range(a, b, rows):
            stop = min(start + rows, b)
            block = x[order[start:stop]] @ pool.T
            own = torch.arange(stop - start)
            block[own, own + (start - a)] = -torch.inf  # the list itself comes first: not its own neighbour
            top_s, top_i = torch.topk(block, kk, dim=1)
            best_s[start:stop, :kk] = top_s
            best_i[start:stop, :kk] = candidates[top_i]
    # Back from list order to the caller's order, neighbour numbers included.
    best_i = torch.where(best_i == MISSING, MISSING, order[best_i.clamp(min=0)])
    out_s = torch.empty_like(best_s)
    out_i = torch.empty_like(best_i)
    out_s[order], out_i[order] = best_s, best_i
    out_i[torch.isinf(out_s)] = MISSING
    return out_s, out_i
