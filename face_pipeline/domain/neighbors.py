"""k-nearest-neighbour graphs of L2-normalised face vectors, without an n x n matrix, searched by FAISS.

Two searches, both FAISS indexes (faiss-cpu, imported on first use: everyday commands never load it):

- exact: `IndexFlatIP`, every face against every face in BLAS blocks. O(n^2 d); right for a few thousand
  faces (the default up to n * n * d = 1e11: 14K faces of 512-d, 28K of 128-d).
- ivf: `IndexIVFScalarQuantizer` (FAISS's IVF with float16 codes). k-means (on a sample of 16 faces per
  list) splits the faces into ~4 sqrt(n) lists and each face is compared with the faces of its `n_probe`
  nearest lists. O(n^1.5 d). float16 codes halve the index's memory and scan faster than float32; the
  similarities of the neighbours found are then recomputed in float32, so thresholds see exact values
  (float16 input is stored exactly in the codes, and its search's float32 products are already exact).
  Faces of one person are close together, so they share lists: on 25K synthetic 512-d faces 99.5% of
  the neighbours above cosine 0.4 are found.

Vectors are computed on in float32 (numpy's float64 BLAS segfaults on large products on this machine).
float16 input (a run's whole-library working copy, storage/collection_snapshots.py) is kept as it is and
converted a block at a time, so the search never holds a float32 copy of every face.
The result is a `NeighborGraph`: per face its k most similar other faces (cosine), best first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

__all__ = ["MISSING", "FaceIndex", "NeighborGraph", "knn_graph"]

MISSING = -1  # neighbour index where fewer than k neighbours were found

# n * n * d up to which the search is exhaustive: 14K faces of 512-d (~2 s on one core), 28K of 128-d. An
# approximate search loses some of the weak links that hold ArcFace's small groups together, so small
# libraries, where exhaustive search is cheap, get the exact graph.
_EXACT_MAX_WORK = 1e11
_TRAIN_PER_LIST = 16  # k-means sample per list: lists only need to be roughly balanced and local
_TRAIN_ITERATIONS = 4  # Lloyd iterations; 8 found no more neighbours on 25K synthetic faces
_RESCORE_ROWS = 256  # faces whose neighbours are re-scored at once: 256 * k * d floats (8 MB at k 15, 512-d)
_BLOCK_ROWS = 8192  # faces converted to float32 at once (16 MB at 512-d)


@dataclass(frozen=True)
class NeighborGraph:
    """Directed k-NN graph.

    indices : (n, k) int64, neighbour face indices, best first; `MISSING` where fewer were found
    similarities : (n, k) float32, cosine similarities aligned with `indices`; -inf where missing
    exact : whether the search was exhaustive
    index : with `knn_graph(..., keep_index=True)` and the inverted-file search, the `FaceIndex` searched,
        holding face i as entry i: what a run keeps for later runs, so it need not build the same index again
    """

    indices: np.ndarray
    similarities: np.ndarray
    exact: bool
    index: FaceIndex | None = field(default=None, repr=False, compare=False)

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


def knn_graph(
    vectors: np.ndarray,
    n_neighbors: int = 15,
    *,
    method: Literal["auto", "exact", "ivf"] = "auto",
    n_lists: int | None = None,
    n_probe: int = 6,
    seed: int = 0,
    n_threads: int | None = 1,
    keep_index: bool = False,
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
        Seeds the k-means sample and initialisation; the result is deterministic for a given seed and
        thread count.
    n_threads : int or None
        FAISS (OpenMP) threads during the search, restored afterwards; None keeps FAISS's setting. One by
        default: on a shared 2-core machine two threads waiting on each other were slower than one.
    keep_index : keep the inverted file searched (`NeighborGraph.index`; None after an exact search)
        instead of freeing it: `FaceIndex.build(vectors)` with the same lists, seed and probes, ready.

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
    if n_lists is not None and n_lists < 1:
        raise ValueError(f"n_lists must be >= 1, got {n_lists!r}")
    if n_threads is not None and n_threads < 1:
        raise ValueError(f"n_threads must be >= 1 or None, got {n_threads!r}")
    x = _as_matrix(vectors)
    n, d = x.shape
    k = min(int(n_neighbors), max(n - 1, 0))
    if k == 0:
        return NeighborGraph(np.empty((n, 0), np.int64), np.empty((n, 0), np.float32), exact=True)
    if method == "auto":
        method = "exact" if float(n) * n * d <= _EXACT_MAX_WORK else "ivf"
    if method == "exact":
        import faiss  # a compiled library of ~30 MB: loaded only when a graph is built

        x = _as_float32(x)  # exhaustive only up to ~14K faces of 512-d: the copy is small
        with _faiss_threads(n_threads):
            index = faiss.IndexFlatIP(d)
            index.add(x)
            sims, idx = index.search(x, k + 1)  # the face itself is (nearly always) its own best match
        idx, sims = _without_self(idx.astype(np.int64, copy=False), sims, k)
        sims[idx == MISSING] = -np.inf
        return NeighborGraph(idx, sims, exact=True)
    ivf = FaceIndex.build(x[:0], n_lists=n_lists, n_probe=n_probe, seed=seed, n_threads=n_threads, train_on=x)
    idx, sims = _without_self(*ivf.add_and_search(x, k + 1), k)
    if x.dtype != np.float16:  # float16 codes round float32 vectors: score the neighbours found exactly
        idx, sims = _rescored(x, idx)
    # (float16 vectors are their own codes: the search's float32 products are already exact, to ~3e-7)
    return NeighborGraph(idx, sims, exact=False, index=ivf if keep_index else None)


class FaceIndex:
    """A searchable, growable inverted file over faces 0..size-1 (FAISS IVF, float16 codes), for asking
    who the nearest known faces of a few new faces are without reading or comparing all the others.

    Build it with `FaceIndex.build(vectors)`; `add` appends faces (numbered on), `search` answers k-NN
    queries. `to_bytes` / `from_bytes` turn it into a uint8 array and back, for storage to persist.
    """

    def __init__(self, index: Any, n_threads: int | None = 1) -> None:
        self._index = index
        self.n_threads = n_threads

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        n_lists: int | None = None,
        n_probe: int = 6,
        seed: int = 0,
        n_threads: int | None = 1,
        train_on: np.ndarray | None = None,
        method: Literal["auto", "exact", "ivf"] = "ivf",
    ) -> FaceIndex:
        """k-means lists (default 4 sqrt(n)) trained on a sample of `train_on` (default: `vectors`, (n, d)),
        then `vectors` added.

        method : 'ivf' (default) as above; 'exact': one list of float32 vectors, every query compared with
        every face and scored exactly, as `knn_graph`'s exhaustive search; 'auto': exact while n * n * d <=
        1e11 (`knn_graph`'s rule), so a small library's new faces find the neighbours a full run finds."""
        if method not in ("auto", "exact", "ivf"):
            raise ValueError(f"method must be 'auto', 'exact' or 'ivf', got {method!r}")
        x = _as_matrix(vectors)
        train = x if train_on is None else _as_matrix(train_on)
        n = len(train)
        if n == 0:
            raise ValueError("cannot build a face index from no vectors")
        if method == "auto":
            method = "exact" if float(n) * n * train.shape[1] <= _EXACT_MAX_WORK else "ivf"
        with _faiss_threads(n_threads):
            if method == "exact":
                index = _exhaustive_ivf(_as_float32(train[:1]))
            else:
                lists = min(n_lists if n_lists is not None else max(1, round(4 * math.sqrt(n))), n)
                index = _trained_ivf(_training_sample(train, lists, seed), lists, n_probe, seed)
        built = cls(index, n_threads)
        built.add(x)
        return built

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def add(self, vectors: np.ndarray) -> None:
        """Append faces (m, d); they are numbered size..size+m-1."""
        x = _as_matrix(vectors)
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors must have {self.dim} columns, got shape {x.shape!r}")
        with _faiss_threads(self.n_threads):
            for _, block in _float32_blocks(x):
                self._index.add(block)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar indexed faces of each query (q, d): indices (q, k) int64, best first, MISSING
        where fewer were found, and cosine similarities (q, k) float32 scored with the float16 codes
        (within ~1e-3 of the float32 value), -inf where missing."""
        q = _as_float32(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries must have {self.dim} columns, got shape {q.shape!r}")
        with _faiss_threads(self.n_threads):
            sims, idx = self._index.search(q, int(k))
        idx = idx.astype(np.int64, copy=False)
        sims = np.asarray(sims, dtype=np.float32)
        sims[idx == MISSING] = -np.inf
        return idx, sims

    def add_and_search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`add(vectors)`, then `search(vectors, k)` (each face finds itself too), sharing the one costly
        step of both: comparing every face with every list's centre. A block at a time: every block is added
        before any is searched, so the result is the one-shot one."""
        import faiss

        x = _as_matrix(vectors)
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors must have {self.dim} columns, got shape {x.shape!r}")
        n, n_probe, first = len(x), self._index.nprobe, self.size
        centre_sims = np.empty((n, n_probe), dtype=np.float32)
        lists = np.empty((n, n_probe), dtype=np.int64)
        idx = np.empty((n, int(k)), dtype=np.int64)
        sims = np.empty((n, int(k)), dtype=np.float32)
        with _faiss_threads(self.n_threads):
            for start, block in _float32_blocks(x):
                rows = slice(start, start + len(block))
                centre_sims[rows], lists[rows] = self._index.quantizer.search(block, n_probe)  # best list first
                home = np.ascontiguousarray(lists[rows, 0])
                ids = np.arange(first + start, first + start + len(block), dtype=np.int64)
                self._index.add_core(len(block), faiss.swig_ptr(block), faiss.swig_ptr(ids), faiss.swig_ptr(home))
            for start, block in _float32_blocks(x):
                rows = slice(start, start + len(block))
                sims[rows], idx[rows] = self._index.search_preassigned(block, int(k), lists[rows], centre_sims[rows])
        sims[idx == MISSING] = -np.inf
        return idx, sims

    @property
    def native(self) -> Any:
        """The FAISS index itself, for storage to write and read with FAISS's own file functions (no copy
        of the whole index in between, as `to_bytes` makes)."""
        return self._index

    def to_bytes(self) -> np.ndarray:
        import faiss

        return np.asarray(faiss.serialize_index(self._index))

    @classmethod
    def from_bytes(cls, data: np.ndarray, n_threads: int | None = 1) -> FaceIndex:
        import faiss

        return cls(faiss.deserialize_index(np.asarray(data, dtype=np.uint8)), n_threads)


@contextmanager
def _faiss_threads(n_threads: int | None) -> Iterator[None]:
    """FAISS's OpenMP thread count for a block, restored afterwards (None: leave it)."""
    import faiss  # a compiled library of ~30 MB: loaded only when an index is built or searched

    before = faiss.omp_get_max_threads()
    if n_threads is not None:
        faiss.omp_set_num_threads(n_threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (n, d), got shape {vectors.shape!r}")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    """(n, d) float16 kept as it is (converted a block at a time where used), anything else as float32."""
    vectors = np.asarray(vectors)
    return vectors if vectors.dtype == np.float16 and vectors.ndim == 2 else _as_float32(vectors)


def _float32_blocks(x: np.ndarray, rows: int = _BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, contiguous float32 block) over the rows of x, `rows` at a time."""
    for start in range(0, len(x), rows):
        yield start, _as_float32(x[start : start + rows])


def _training_sample(x: np.ndarray, n_lists: int, seed: int) -> np.ndarray:
    """The faces k-means learns the lists from, float32: `_TRAIN_PER_LIST` per list drawn at random (seeded),
    the sample FAISS would draw itself, taken here so that only the sample is converted."""
    size = n_lists * _TRAIN_PER_LIST
    if len(x) <= size:
        return _as_float32(x)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=size, replace=False))
    return _as_float32(x[rows])


def _trained_ivf(x: np.ndarray, n_lists: int, n_probe: int, seed: int) -> Any:
    """An empty IVF index with float16 codes whose lists are k-means cells of a sample of x."""
    import faiss

    # IVF lists with a flat (exact) coarse quantizer, float16 codes; the index owns its quantizer. The codes
    # are the vectors themselves, not their offsets from the list centre (FAISS's default): float16 vectors
    # are then stored exactly and scored with exact float32 products, so a graph of float16 vectors needs no
    # re-scoring (which converted every neighbour again: k x the data).
    index: Any = faiss.index_factory(x.shape[1], f"IVF{n_lists},SQfp16", faiss.METRIC_INNER_PRODUCT)
    index.by_residual = False
    index.cp.seed = seed
    index.cp.niter = _TRAIN_ITERATIONS
    index.cp.max_points_per_centroid = _TRAIN_PER_LIST  # FAISS samples this many faces per list ...
    index.cp.min_points_per_centroid = 1  # ... and needs no more (its default warns below 39)
    index.train(x)
    index.nprobe = min(n_probe, n_lists)
    return index


def _exhaustive_ivf(x: np.ndarray) -> Any:
    """An empty inverted file of one list holding float32 vectors: exhaustive, exact inner products, and the
    same interface (add_core, search_preassigned, serialisation) as `_trained_ivf`'s."""
    import faiss

    index: Any = faiss.index_factory(x.shape[1], "IVF1,Flat", faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1
    index.train(x[:1])
    index.nprobe = 1
    return index


def _without_self(idx: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, k + 1) search results -> (n, k) indices and float32 similarities without the face itself.
    Where the face is not among its own results (exact duplicates tie with it), the last result goes."""
    n = len(idx)
    own = idx == np.arange(n)[:, None]
    own[~own.any(1), -1] = True
    own &= np.cumsum(own, axis=1) == 1  # only the first appearance, should a face be listed twice
    return idx[~own].reshape(n, k), np.asarray(sims, dtype=np.float32)[~own].reshape(n, k)


def _rescored(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 cosines of the neighbours found, each row re-sorted best first (the search scored
    with float16 codes); missing neighbours last, at -inf."""
    n, k = idx.shape
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    for start in range(0, n, _RESCORE_ROWS):
        rows = slice(start, min(start + _RESCORE_ROWS, n))
        neighbours = x[np.maximum(idx[rows], 0)]  # (rows, k, d)
        block = np.matmul(neighbours, x[rows, :, None])[:, :, 0]
        sims[rows] = np.where(idx[rows] == MISSING, -np.inf, block)
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(sims, order, 1)
