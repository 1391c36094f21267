"""Validation and conversion shared by the vector store back ends (numpy in, plain Python out).

Both back ends must treat ids, vectors, payloads and filters identically, so the rules live here once:
vectors are L2-normalised float32 rows, ids are non-negative int64, payload values are JSON scalars of the
types the SQL tables hold (face_id/image_id int, person_id/cluster_id str or None).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from face_pipeline.storage.vectors import PAYLOAD_KEYS, VectorStoreError

# Collection names become folder names for the embedded store: keep them path-safe everywhere.
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# Types of the payload keys the pipeline filters on; they mirror the SQL columns (models.FaceInstance).
PAYLOAD_TYPES: dict[str, tuple[type, ...]] = {
    "face_id": (int,),
    "image_id": (int,),
    "person_id": (str, type(None)),
    "cluster_id": (str, type(None)),
}
# Keyword-indexed so that "this person" / "this cluster" / "no person yet" filters stay fast.
INDEXED_KEYWORD_KEYS = ("person_id", "cluster_id")

UPSERT_BATCH = 1000  # points per update request: bounds request size and memory of Point objects
READ_BATCH = 4096  # ids per retrieve/scroll page
SEARCH_BATCH = 256  # queries per batched search request

_MAX_IDS_IN_MESSAGE = 10


def check_collection_name(name: str) -> str:
    """Return name if it is usable as a collection and a folder name, else raise VectorStoreError."""
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name):
        raise VectorStoreError(
            f"invalid collection name {name!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or int(dim) < 1:
        raise VectorStoreError(f"vector dimension must be a positive integer, got {dim!r}")
    return int(dim)


def format_ids(ids: Sequence[int] | np.ndarray) -> str:
    """A short human list of ids: the first few, then how many more."""
    ids = [int(i) for i in ids]
    shown = ", ".join(str(i) for i in ids[:_MAX_IDS_IN_MESSAGE])
    more = len(ids) - _MAX_IDS_IN_MESSAGE
    return f"{shown} (and {more} more)" if more > 0 else shown


def as_ids(face_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """(n,) int64 non-negative ids (Qdrant point ids are unsigned)."""
    ids = np.asarray(face_ids)
    if ids.ndim != 1:
        raise VectorStoreError(f"face_ids must be one-dimensional, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise VectorStoreError(f"face_ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and ids.min() < 0:
        raise VectorStoreError(f"face ids must be >= 0, got {format_ids(ids[ids < 0])}")
    return ids


def normalise_rows(vectors: np.ndarray, dim: int, ids: np.ndarray | None = None) -> np.ndarray:
    """(n, dim) float32 rows scaled to unit length; raises on wrong shape, NaN/inf or zero rows."""
    vecs = np.asarray(vectors, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[1] != dim:
        raise VectorStoreError(f"vectors must have shape (n, {dim}), got {vecs.shape}")
    norms = np.linalg.norm(vecs, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        which = ids[bad] if ids is not None else np.flatnonzero(bad)
        label = "face ids" if ids is not None else "rows"
        raise VectorStoreError(
            f"cannot store zero or non-finite vectors (cosine is undefined): {label} {format_ids(which)}"
        )
    return vecs / norms[:, None]


def normalise_query(vector: np.ndarray, dim: int) -> np.ndarray:
    """(dim,) float32 unit query; accepts (dim,) or (1, dim)."""
    vec = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vec.shape != (dim,):
        raise VectorStoreError(f"query vector must have {dim} values, got shape {np.shape(vector)}")
    return normalise_rows(vec[None, :], dim)[0]


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (the engines' payload encoders accept only plain JSON types)."""
    return value.item() if isinstance(value, np.generic) else value


def clean_payload(payload: Mapping[str, Any], *, allow_face_id: bool) -> dict[str, Any]:
    """A plain dict whose known keys have the SQL column types; raises VectorStoreError otherwise."""
    out = {str(k): _plain(v) for k, v in payload.items()}
    if not allow_face_id and "face_id" in out:
        raise VectorStoreError("face_id is the point id and cannot be changed with set_payload")
    for key, value in out.items():
        expected = PAYLOAD_TYPES.get(key)
        # bool is an int subclass: reject it explicitly for the integer keys.
        if expected and (not isinstance(value, expected) or isinstance(value, bool)):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in expected)
            raise VectorStoreError(f"payload {key!r} must be {names}, got {value!r}")
    return out


def complete_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """A hit's payload with every PAYLOAD_KEYS key present (None when unset).

    Qdrant drops a key that set_payload sets to None, while upsert keeps an explicit null; readers
    should not have to care which happened.
    """
    out = dict.fromkeys(PAYLOAD_KEYS)
    out.update(payload or {})
    return out


def build_payloads(ids: np.ndarray, payloads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One payload dict per id with face_id set from the id (a differing face_id is an error)."""
    if len(payloads) != len(ids):
        raise VectorStoreError(f"got {len(ids)} face ids but {len(payloads)} payloads")
    out = []
    for fid, payload in zip(ids.tolist(), payloads, strict=True):
        clean = clean_payload(payload, allow_face_id=True)
        if clean.setdefault("face_id", fid) != fid:
            raise VectorStoreError(f"payload face_id {clean['face_id']} differs from point id {fid}")
        out.append(clean)
    return out


def prepare_upsert(
    face_ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[Mapping[str, Any]], dim: int
) -> Iterator[tuple[list[int], list[list[float]], list[dict[str, Any]]]]:
    """Validate everything, then yield batches of UPSERT_BATCH (ids, unit vectors, payloads) as the plain
    lists the client APIs take. Nothing is yielded when any input is invalid (VectorStoreError), and
    lists are built per batch: all 50K rows as Python floats at once would cost ~0.8 GB."""
    ids = as_ids(face_ids)
    if len(np.unique(ids)) != len(ids):
        uniq, counts = np.unique(ids, return_counts=True)
        raise VectorStoreError(f"duplicate face ids in one upsert: {format_ids(uniq[counts > 1])}")
    if len(vectors) != len(ids):
        raise VectorStoreError(f"got {len(ids)} face ids but {len(vectors)} vectors")
    vecs = normalise_rows(vectors, dim, ids)
    clean = build_payloads(ids, payloads)
    return _upsert_batches(ids, vecs, clean)


def _upsert_batches(
    ids: np.ndarray, vecs: np.ndarray, payloads: list[dict[str, Any]]
) -> Iterator[tuple[list[int], list[list[float]], list[dict[str, Any]]]]:
    for part in batches(len(ids), UPSERT_BATCH):
        yield ids[part].tolist(), vecs[part].tolist(), payloads[part]


def payload_groups(groups: Sequence[tuple[Any, Mapping[str, Any]]]) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """(ids, payload) groups validated before any write, empty ones dropped (set_payloads)."""
    prepared = [(as_ids(ids), clean_payload(payload, allow_face_id=False)) for ids, payload in groups]
    return [(ids, values) for ids, values in prepared if len(ids) and values]


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@dataclass(frozen=True)
class Condition:
    """One back-end-neutral filter term: key is empty (None/absent), equals value, or is any of values."""

    key: str
    kind: Literal["empty", "equals", "any"]
    value: Any = None


def filter_conditions(filter_payload: Mapping[str, Any] | None) -> list[Condition]:
    """Translate {"person_id": None, "cluster_id": "c7"} into conditions that must all hold.

    None means null or absent (Qdrant's IsEmpty; IsNull would miss absent keys); a list, tuple or set
    means any of its values; anything else must be a str, int or bool (exact match).
    """
    conditions = []
    for key, raw in (filter_payload or {}).items():
        value = _plain(raw)
        if value is None:
            conditions.append(Condition(key, "empty"))
        elif isinstance(value, list | tuple | set | frozenset | np.ndarray):
            values = [_plain(v) for v in value]
            if not values or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
                raise VectorStoreError(f"filter {key!r}: 'any of' needs a non-empty list of str or int")
            if len({type(v) for v in values}) > 1:
                raise VectorStoreError(f"filter {key!r}: do not mix str and int values in one list")
            conditions.append(Condition(key, "any", values))
        elif isinstance(value, str | int | bool):
            conditions.append(Condition(key, "equals", value))
        else:
            raise VectorStoreError(f"filter {key!r}: cannot match on {type(value).__name__} {value!r}")
    return conditions


def _dense(vector: Any) -> Any:
    # The unnamed vector comes back as a list; accept the named form {"": [...]} too.
    return vector[""] if isinstance(vector, dict) else vector


class RecordArrays:
    """Pages of engine records (objects with .id and .vector) gathered into one (ids, vectors) pair.

    Each page is written straight into arrays sized for `expected` rows (grown by doubling if more come), so
    the vectors exist once: a list of pages concatenated at the end held every vector twice (100 MB more at
    50K 512-d faces) and copied them all again. Both clients hand vectors over as Python lists of floats;
    streaming them through np.fromiter frees each list as soon as it is read: 2x faster than np.asarray on a
    list of lists, and it never holds n * dim Python floats (32 bytes each) at once.
    """

    def __init__(self, dim: int, expected: int = 0, dtype: type[np.floating] = np.float32) -> None:
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ValueError(f"vectors are read as float32 or float16, not {np.dtype(dtype)}")
        self.dim = dim
        self._ids = np.empty(max(expected, 0), dtype=np.int64)
        self._vectors = np.empty((max(expected, 0), dim), dtype=dtype)
        self._n = 0

    def add(self, records: Sequence[Any]) -> None:
        m = len(records)
        if self._n + m > len(self._ids):
            size = max(self._n + m, 2 * len(self._ids))
            self._ids = np.resize(self._ids, size)
            self._vectors = np.resize(self._vectors, (size, self.dim))
        rows = slice(self._n, self._n + m)
        self._ids[rows] = np.fromiter((int(r.id) for r in records), dtype=np.int64, count=m)
        values = itertools.chain.from_iterable(_dense(r.vector) for r in records)
        self._vectors[rows] = np.fromiter(values, dtype=np.float32, count=m * self.dim).reshape(m, self.dim)
        self._n += m

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """(n,) int64 ids ascending and their (n, dim) vectors (scrolls walk ids in order: usually
        no sort, and no copy when `expected` was right)."""
        ids, vectors = self._ids[: self._n], self._vectors[: self._n]
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            order = np.argsort(ids, kind="stable")
            ids, vectors = ids[order], vectors[order]
        return ids, vectors


def payloads_by_id(records: Sequence[Any], keys: Sequence[str]) -> dict[int, dict[str, Any]]:
    """face id -> {key: value or None} of engine records (objects with .id and .payload)."""
    return {int(r.id): {key: (r.payload or {}).get(key) for key in keys} for r in records}


def order_fetched(wanted: np.ndarray, found: np.ndarray, vectors: np.ndarray, name: str) -> np.ndarray:
    """Rows of vectors ((m, dim), ids found) rearranged into the order of wanted ((n,) ids) -> (n, dim).

    Raises VectorStoreError naming the wanted ids that were not found.
    """
    order = np.argsort(found, kind="stable")
    pos = np.minimum(np.searchsorted(found[order], wanted), max(len(found) - 1, 0))
    hit = found[order][pos] == wanted if len(found) else np.zeros(len(wanted), dtype=bool)
    if not hit.all():
        raise VectorStoreError(
            f"collection {name!r} has no vectors for face ids {format_ids(wanted[~hit])}; "
            "re-run the embedding step for them"
        )
    return vectors[order[pos]]
