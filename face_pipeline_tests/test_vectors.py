"""The vector store contract, proved on both back ends: the embedded Qdrant engine (in tmp_path) and
qdrant-client in ":memory:" local mode.

A Qdrant server test is not possible here (no server on this machine and none reachable); the ":memory:"
client runs the very same QdrantClientVectorStore code as a server URL does, only the transport differs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams

from face_pipeline.storage.collection_snapshots import CollectionSnapshots
from face_pipeline.storage.vector_backends import EdgeVectorStore, QdrantClientVectorStore
from face_pipeline.storage.vectors import (
    VectorStore,
    VectorStoreError,
    VectorStoreLocked,
    open_vector_store,
)

DIM = 32
N = 300
SPACE = "raw_test"
REPO = Path(__file__).resolve().parents[1]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(N,) shuffled non-contiguous ids, (N, DIM) float32 vectors (not unit length), N payloads."""
    rng = np.random.default_rng(7)
    ids = rng.permutation(np.arange(N, dtype=np.int64) * 3 + 10)
    vectors = (rng.normal(size=(N, DIM)) * rng.uniform(0.5, 3.0, size=(N, 1))).astype(np.float32)
    payloads = [
        {
            "image_id": int(fid) // 2,
            "person_id": None if i % 3 == 0 else f"p{i % 5}",
            "cluster_id": f"c{i % 4}" if i % 5 else None,
        }
        for i, fid in enumerate(ids)
    ]
    return ids, vectors, payloads


@pytest.fixture(params=["edge", "client-memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    made: VectorStore = (
        EdgeVectorStore(tmp_path / "vectors") if request.param == "edge" else QdrantClientVectorStore(":memory:")
    )
    yield made
    made.close()


@pytest.fixture
def filled(store: VectorStore, data: tuple[np.ndarray, np.ndarray, list[dict]]) -> VectorStore:
    ids, vectors, payloads = data
    store.ensure_collection(SPACE, DIM)
    store.upsert(SPACE, ids, vectors, payloads)
    return store


def payload_of(data: tuple[np.ndarray, np.ndarray, list[dict]], face_id: int) -> dict:
    ids, _, payloads = data
    return payloads[int(np.flatnonzero(ids == face_id)[0])]


# --- collections ---------------------------------------------------------------------------------------
def test_ensure_collection_is_idempotent_and_rejects_another_dim(store: VectorStore) -> None:
    assert not store.has_collection(SPACE)
    store.ensure_collection(SPACE, DIM)
    store.ensure_collection(SPACE, DIM)
    assert store.has_collection(SPACE)
    assert store.count(SPACE) == 0
    with pytest.raises(VectorStoreError, match=rf"{DIM}-dimensional vectors, not 64"):
        store.ensure_collection(SPACE, 64)


def test_collections_are_independent_spaces(store: VectorStore) -> None:
    store.ensure_collection("raw", DIM)
    store.ensure_collection("proj_v1", 8)
    store.upsert("proj_v1", np.array([1, 2]), np.eye(2, 8, dtype=np.float32), [{}, {}])
    assert (store.count("raw"), store.count("proj_v1")) == (0, 2)


def test_drop_collection_removes_it_and_is_idempotent(filled: VectorStore) -> None:
    filled.drop_collection(SPACE)
    assert not filled.has_collection(SPACE)
    filled.drop_collection(SPACE)
    with pytest.raises(VectorStoreError, match="does not exist"):
        filled.count(SPACE)
    filled.ensure_collection(SPACE, 16)  # the name is free again, with any dim
    assert filled.count(SPACE) == 0


def test_bad_names_and_missing_collections_give_clear_errors(store: VectorStore) -> None:
    with pytest.raises(VectorStoreError, match="invalid collection name"):
        store.ensure_collection("../escape", DIM)
    with pytest.raises(VectorStoreError, match="'nope' does not exist"):
        store.search("nope", np.ones(DIM, dtype=np.float32), 3)


# --- points --------------------------------------------------------------------------------------------
def test_upsert_then_count_and_upsert_again_replaces(filled: VectorStore, data) -> None:
    ids, vectors, payloads = data
    assert filled.count(SPACE) == N
    filled.upsert(SPACE, ids[:10], -vectors[:10], payloads[:10])  # same ids: replaced, not added
    assert filled.count(SPACE) == N
    np.testing.assert_allclose(filled.fetch(SPACE, ids[:10]), unit(-vectors[:10]), atol=1e-6)


def test_a_large_upsert_is_sent_in_batches_and_validated_before_any_write(store: VectorStore) -> None:
    rng = np.random.default_rng(3)
    ids, vectors = np.arange(2345, dtype=np.int64), rng.normal(size=(2345, 8)).astype(np.float32)
    store.ensure_collection(SPACE, 8)
    bad = vectors.copy()
    bad[2000] = np.nan
    with pytest.raises(VectorStoreError, match="face ids 2000"):
        store.upsert(SPACE, ids, bad, [{}] * len(ids))
    assert store.count(SPACE) == 0
    store.upsert(SPACE, ids, vectors, [{}] * len(ids))
    got_ids, got_vectors = store.fetch_all(SPACE)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_allclose(got_vectors, unit(vectors), atol=1e-6)


def test_fetch_all_returns_sorted_ids_and_normalised_vectors(filled: VectorStore, data) -> None:
    ids, vectors, _ = data
    got_ids, got_vectors = filled.fetch_all(SPACE)
    order = np.argsort(ids)
    assert got_ids.dtype == np.int64 and got_vectors.dtype == np.float32
    assert got_vectors.shape == (N, DIM)
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_allclose(got_vectors, unit(vectors[order]), atol=1e-6)


def test_fetch_all_of_an_empty_collection_has_the_right_shapes(store: VectorStore) -> None:
    store.ensure_collection(SPACE, DIM)
    got_ids, got_vectors = store.fetch_all(SPACE)
    assert got_ids.shape == (0,) and got_vectors.shape == (0, DIM)


def test_fetch_returns_vectors_in_the_requested_order(filled: VectorStore, data) -> None:
    ids, vectors, _ = data
    pick = np.array([5, 0, 299, 17, 5])
    np.testing.assert_allclose(filled.fetch(SPACE, ids[pick]), unit(vectors[pick]), atol=1e-6)


def test_fetch_of_a_missing_id_names_it(filled: VectorStore, data) -> None:
    ids, _, _ = data
    with pytest.raises(VectorStoreError, match=r"no vectors for face ids 999999\b"):
        filled.fetch(SPACE, np.array([ids[0], 999_999]))


def test_delete_removes_points_and_ignores_unknown_ids(filled: VectorStore, data) -> None:
    ids, _, _ = data
    filled.delete(SPACE, np.append(ids[:50], 999_999))
    assert filled.count(SPACE) == N - 50
    got_ids, _ = filled.fetch_all(SPACE)
    assert not np.isin(ids[:50], got_ids).any()


def test_upsert_rejects_vectors_without_a_direction(store: VectorStore) -> None:
    store.ensure_collection(SPACE, DIM)
    vectors = np.ones((3, DIM), dtype=np.float32)
    vectors[1] = 0
    with pytest.raises(VectorStoreError, match="face ids 11"):
        store.upsert(SPACE, np.array([10, 11, 12]), vectors, [{}, {}, {}])
    with pytest.raises(VectorStoreError, match=r"shape \(n, 32\)"):
        store.upsert(SPACE, np.array([1]), np.ones((1, 16), dtype=np.float32), [{}])
    assert store.count(SPACE) == 0


def test_upsert_checks_payload_types_against_the_sql_columns(store: VectorStore) -> None:
    store.ensure_collection(SPACE, DIM)
    one = np.ones((1, DIM), dtype=np.float32)
    with pytest.raises(VectorStoreError, match="'person_id' must be str or None"):
        store.upsert(SPACE, np.array([1]), one, [{"person_id": 42}])
    store.upsert(SPACE, np.array([1]), one, [{"image_id": np.int64(4)}])  # numpy scalars are fine
    assert store.search(SPACE, one[0], 1)[0].payload == {
        "face_id": 1,
        "image_id": 4,
        "person_id": None,
        "cluster_id": None,
    }


# --- search --------------------------------------------------------------------------------------------
def test_search_ranks_the_true_nearest_first_with_cosine_scores(filled: VectorStore, data) -> None:
    ids, vectors, _ = data
    rng = np.random.default_rng(11)
    expected_scores = unit(vectors)
    for row in (3, 120, 250):
        query = vectors[row] + rng.normal(scale=0.3, size=DIM).astype(np.float32)
        cosine = expected_scores @ unit(query)
        top = np.argsort(-cosine)[:10]
        hits = filled.search(SPACE, query, 10)
        assert hits[0].face_id == ids[row]
        assert [h.face_id for h in hits] == ids[top].tolist()
        np.testing.assert_allclose([h.score for h in hits], cosine[top], atol=1e-5)
        assert hits[0].payload["face_id"] == ids[row]


def test_search_batch_answers_like_one_search_per_query(filled: VectorStore, data) -> None:
    _, vectors, _ = data
    queries = vectors[:300:7]  # 43 queries
    for flt in (None, {"person_id": None}):
        batch = filled.search_batch(SPACE, queries, 5, flt)
        assert len(batch) == len(queries)
        for query, hits in zip(queries, batch, strict=True):
            single = filled.search(SPACE, query, 5, flt)
            assert [h.face_id for h in hits] == [h.face_id for h in single]
            np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], atol=1e-6)


def test_search_filters_on_null_person_and_on_a_cluster(filled: VectorStore, data) -> None:
    ids, vectors, payloads = data
    query = vectors[0]
    unnamed = filled.search(SPACE, query, N, {"person_id": None})
    expected = {int(f) for f, p in zip(ids, payloads, strict=True) if p["person_id"] is None}
    assert {h.face_id for h in unnamed} == expected
    assert all(h.payload["person_id"] is None for h in unnamed)

    c2 = filled.search(SPACE, query, N, {"cluster_id": "c2", "person_id": None})
    expected = {
        int(f) for f, p in zip(ids, payloads, strict=True) if p["cluster_id"] == "c2" and p["person_id"] is None
    }
    assert expected and {h.face_id for h in c2} == expected
    assert [h.score for h in c2] == sorted((h.score for h in c2), reverse=True)

    either = filled.search(SPACE, query, N, {"cluster_id": ["c1", "c3"]})
    assert {h.payload["cluster_id"] for h in either} == {"c1", "c3"}


def test_null_filter_also_matches_points_without_the_key(store: VectorStore) -> None:
    store.ensure_collection(SPACE, 4)
    store.upsert(
        SPACE,
        np.array([1, 2, 3]),
        np.eye(3, 4, dtype=np.float32),
        [{"person_id": None}, {}, {"person_id": "a"}],
    )
    hits = store.search(SPACE, np.ones(4, dtype=np.float32), 10, {"person_id": None})
    assert sorted(h.face_id for h in hits) == [1, 2]


def test_set_payload_on_many_ids_is_seen_by_filters(filled: VectorStore, data) -> None:
    ids, vectors, _ = data
    members = ids[:120]
    filled.set_payload(SPACE, members, {"cluster_id": "unknown_cluster_9", "person_id": None})
    hits = filled.search(SPACE, vectors[0], N, {"cluster_id": "unknown_cluster_9"})
    assert sorted(h.face_id for h in hits) == sorted(members.tolist())
    assert all(h.payload["person_id"] is None for h in hits)
    # Other payload keys are kept.
    assert all(h.payload["image_id"] == h.face_id // 2 for h in hits)


def test_set_payload_with_a_missing_id_names_it_and_changes_nothing(filled: VectorStore, data) -> None:
    ids, vectors, _ = data
    with pytest.raises(VectorStoreError, match=r"no points for face ids 999999\b"):
        filled.set_payload(SPACE, np.array([ids[0], 999_999]), {"cluster_id": "zz"})
    assert filled.search(SPACE, vectors[0], N, {"cluster_id": "zz"}) == []
    with pytest.raises(VectorStoreError, match="face_id is the point id"):
        filled.set_payload(SPACE, ids[:1], {"face_id": 5})


def test_set_payloads_writes_many_groups_and_checks_every_id_first(filled: VectorStore, data) -> None:
    ids, vectors, _ = data
    groups = [(ids[i : i + 10], {"cluster_id": f"unknown_cluster_{i}", "person_id": None}) for i in range(0, 60, 10)]
    filled.set_payloads(SPACE, groups)
    for members, payload in groups:
        hits = filled.search(SPACE, vectors[0], N, {"cluster_id": payload["cluster_id"]})
        assert sorted(h.face_id for h in hits) == sorted(members.tolist())
    with pytest.raises(VectorStoreError, match=r"no points for face ids 999999\b"):  # in the last group
        filled.set_payloads(SPACE, [(ids[60:70], {"cluster_id": "first"}), (np.array([999_999]), {"cluster_id": "x"})])
    assert filled.search(SPACE, vectors[0], N, {"cluster_id": "first"}) == []  # the first group was not written


def test_a_kept_collection_read_is_reused_only_while_the_collection_holds_the_same_faces(filled: VectorStore):
    snapshots = CollectionSnapshots()
    ids, vectors = filled.fetch_all(SPACE)
    reads = []
    original = filled.fetch_all

    def counted(name: str, dtype: type[np.floating] = np.float32) -> tuple[np.ndarray, np.ndarray]:
        reads.append(name)
        return original(name, dtype)

    filled.fetch_all = counted  # type: ignore[method-assign]  # a spy on the real store's reads
    first = snapshots.read(filled, SPACE, ids)
    again = snapshots.read(filled, SPACE, ids)
    assert len(reads) == 1 and again[1] is first[1]
    assert first[1].dtype == np.float16  # the run's working copy: half the memory of float32
    np.testing.assert_array_equal(first[1], vectors.astype(np.float16))
    filled.delete(SPACE, ids[:1])  # SQL now lists one face fewer: the kept read no longer fits
    fewer, _ = snapshots.read(filled, SPACE, ids[1:], keep=False)
    assert len(reads) == 2 and np.array_equal(fewer, ids[1:])
    snapshots.read(filled, SPACE, ids[1:])  # keep=False kept nothing: read again
    assert len(reads) == 3


# --- persistence and locking (embedded engine) ----------------------------------------------------------
def test_edge_store_persists_across_close_and_reopen(tmp_path: Path, data) -> None:
    ids, vectors, payloads = data
    root = tmp_path / "vectors"
    with EdgeVectorStore(root) as first:
        first.ensure_collection(SPACE, DIM)
        first.upsert(SPACE, ids, vectors, payloads)
        first.set_payload(SPACE, ids[:3], {"person_id": "named"})
        first.optimize(SPACE)
    second = EdgeVectorStore(root)
    try:
        assert second.has_collection(SPACE) and second.count(SPACE) == N
        with pytest.raises(VectorStoreError, match=f"{DIM}-dimensional vectors, not 8"):
            second.ensure_collection(SPACE, 8)
        got_ids, got_vectors = second.fetch_all(SPACE)
        np.testing.assert_allclose(got_vectors, unit(vectors[np.argsort(ids)]), atol=1e-6)
        named = second.search(SPACE, vectors[0], N, {"person_id": "named"})
        assert sorted(h.face_id for h in named) == sorted(ids[:3].tolist())
    finally:
        second.close()


def run_in_new_interpreter(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_second_process_gets_a_readable_locked_error_until_the_first_closes(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    holder = EdgeVectorStore(root)
    holder.ensure_collection(SPACE, DIM)
    probe = f"""
        from pathlib import Path
        from face_pipeline.storage.vector_backends import EdgeVectorStore
        from face_pipeline.storage.vectors import VectorStoreLocked
        try:
            print(EdgeVectorStore(Path({str(root)!r})).count({SPACE!r}))
        except VectorStoreLocked as exc:
            print("LOCKED:", exc)
    """
    out = run_in_new_interpreter(probe)
    assert out == (
        f"LOCKED: the embedded vector store at {root / SPACE} is in use by another process (one writer at "
        "a time: wait for the running job, or set FACE_QDRANT_URL to use a Qdrant server)"
    )
    holder.close()
    assert run_in_new_interpreter(probe) == "0"


def test_lock_wait_retries_until_the_other_process_lets_go(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    with EdgeVectorStore(root) as setup:
        setup.ensure_collection(SPACE, 4)
    hold_for_a_second = f"""
        import sys, time
        from face_pipeline.storage.vector_backends import EdgeVectorStore
        store = EdgeVectorStore({str(root)!r})
        store.count({SPACE!r})
        print("held", flush=True)
        sys.stdin.readline()  # hold until the test has seen the lock refused, however slow the machine
        time.sleep(1.5)
        store.close()
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(hold_for_a_second)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(VectorStoreLocked):
            EdgeVectorStore(root).count(SPACE)
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        patient = EdgeVectorStore(root, lock_wait_s=30)
        assert patient.count(SPACE) == 0
        patient.close()
    finally:
        if holder.stdin is not None:
            holder.stdin.close()  # end of input lets the holder go even when an assertion failed first
        holder.wait(timeout=60)


def test_the_engine_refuses_a_second_load_of_a_shard_even_in_one_process(tmp_path: Path) -> None:
    """Why EdgeVectorStore shares one handle per shard across the process (see edge.py)."""
    path = str(tmp_path / "shard")
    shard = EdgeShard.create(path, EdgeConfig(vectors=EdgeVectorParams(size=4, distance=Distance.Cosine)))
    try:
        with pytest.raises(Exception, match="WouldBlock"):
            EdgeShard.load(path)
    finally:
        shard.close()


def test_two_edge_stores_in_one_process_share_the_open_shard(tmp_path: Path) -> None:
    root = tmp_path / "vectors"
    a, b = EdgeVectorStore(root), EdgeVectorStore(root)
    a.ensure_collection(SPACE, 4)
    b.upsert(SPACE, np.array([1]), np.ones((1, 4), dtype=np.float32), [{}])
    a.close()  # b still holds the shard: it stays open for b
    assert b.count(SPACE) == 1
    b.close()
    assert (
        run_in_new_interpreter(
            f"from face_pipeline.storage.vector_backends import EdgeVectorStore\n"
            f"print(EdgeVectorStore({str(root)!r}).count({SPACE!r}))"
        )
        == "1"
    )


def test_client_local_disk_mode_is_locked_to_one_client(tmp_path: Path) -> None:
    url = f"path:{tmp_path / 'local'}"
    first = QdrantClientVectorStore(url)
    try:
        with pytest.raises(VectorStoreLocked, match="in use by another process"):
            QdrantClientVectorStore(url)
    finally:
        first.close()


# --- factory -------------------------------------------------------------------------------------------
def test_open_vector_store_picks_the_back_end_from_the_url(tmp_path: Path) -> None:
    edge = open_vector_store(None, tmp_path / "vectors")
    memory = open_vector_store(":memory:", tmp_path / "unused")
    try:
        assert isinstance(edge, EdgeVectorStore) and isinstance(memory, QdrantClientVectorStore)
    finally:
        edge.close()
        memory.close()
    with pytest.raises(VectorStoreError, match="unsupported Qdrant URL 'ftp://x'"):
        open_vector_store("ftp://x", tmp_path)


@pytest.mark.parametrize("expected", [0, 3, 5, 50])  # none, too few (grows), exact, too many
def test_record_pages_gather_into_one_id_sorted_pair_whatever_the_size_announced(expected: int) -> None:
    from types import SimpleNamespace

    from face_pipeline.storage.vector_backends._common import RecordArrays

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 4)).astype(np.float32)
    ids = np.array([9, 2, 7, 4, 1])  # pages out of id order: a retrieve answers in the order asked
    pages = RecordArrays(4, expected)
    for part in (slice(0, 2), slice(2, 2), slice(2, 5)):
        records = zip(ids[part], vectors[part], strict=True)
        pages.add([SimpleNamespace(id=int(i), vector=v.tolist()) for i, v in records])
    found, rows = pages.sorted()
    order = np.argsort(ids)
    np.testing.assert_array_equal(found, ids[order])
    np.testing.assert_array_equal(rows, vectors[order])
    assert found.dtype == np.int64 and rows.dtype == np.float32 and rows.shape == (5, 4)


def test_a_whole_collection_read_as_float16_holds_the_float32_vectors_rounded(filled: VectorStore) -> None:
    ids, vectors = filled.fetch_all(SPACE)
    half_ids, half = filled.fetch_all(SPACE, np.float16)
    np.testing.assert_array_equal(half_ids, ids)
    assert half.dtype == np.float16 and vectors.dtype == np.float32
    np.testing.assert_array_equal(half, vectors.astype(np.float16))
    with pytest.raises((ValueError, VectorStoreError), match="float32 or float16"):
        filled.fetch_all(SPACE, np.float64)


def test_a_whole_collection_read_lets_go_of_the_engine_and_the_store_goes_on(tmp_path: Path, data) -> None:
    # the scroll maps every vector page into the process; the shard is closed after it (RSS) and reopened
    # by the next call, which must find everything as it was
    from face_pipeline.storage.vector_backends import edge

    ids, vectors, payloads = data
    with EdgeVectorStore(tmp_path / "vectors") as store:
        store.ensure_collection(SPACE, DIM)
        store.upsert(SPACE, ids, vectors, payloads)
        path = store.root / SPACE
        assert path in edge._REGISTRY._open
        before = store.fetch(SPACE, ids[:3])  # as stored (the cosine engine keeps them normalised)
        store.fetch_all(SPACE)
        assert path not in edge._REGISTRY._open  # closed: nobody else in the process held it
        store.set_payload(SPACE, ids[:2], {"person_id": "after"})
        np.testing.assert_array_equal(store.fetch(SPACE, ids[:3]), before)
        assert store.fetch_payloads(SPACE)[int(ids[0])]["person_id"] == "after"
