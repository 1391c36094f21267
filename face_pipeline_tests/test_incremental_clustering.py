"""Incremental cluster-dual: a run after new faces arrive touches only them and their neighbourhoods, and
groups them as a full run would (the link rule), through the real services, SQLite and the embedded store.

The faces are real: lfw-dev's main faces embedded by buffalo_s (512-d ArcFace, .cache/lfw-dev-buffalo_s.npz,
built on first use), written into a library as detection writes them (`insert_faces`: each new face starts
as its own singleton). Yesterday's library holds 80% of the photos; the other 20% arrive today.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import insert, select

from face_pipeline.domain.assignment import SpaceThresholds
from face_pipeline.domain.naming import UNKNOWN_PREFIX, parse_cluster_id
from face_pipeline.services import space_registry
from face_pipeline.services.clustering import NEXT_CLUSTER_KEY, ClusterReport, cluster_unknown_faces
from face_pipeline.services.detection import insert_faces
from face_pipeline.services.known_people import AssignReport, assign_known_faces, compute_person_centroids
from face_pipeline.services.labels import label_cluster, label_face, reject_face
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import GateResult, GateVerdict
from face_pipeline.settings import load_settings
from face_pipeline.storage.models import FaceInstance, Image, PipelineState
from face_pipeline.storage.vectors import VectorStore
from face_pipeline.vision.types import EmbeddingSpaceInfo

SPACE = "insightface_buffalo_s"  # the ArcFace thresholds: the link rule (dbscan, eps 0.6, groups of 2+)
NEW_SHARE = 0.2


class CountingStore:
    """The real vector store, noting which vectors each run reads."""

    def __init__(self) -> None:
        self._store: VectorStore | None = None
        self.fetched: list[int] = []
        self.fetch_all_calls = 0

    def attach(self, store: VectorStore) -> CountingStore:
        self._store = store
        return self

    def fetch(self, name: str, face_ids: np.ndarray) -> np.ndarray:
        self.fetched += np.asarray(face_ids).tolist()
        return self.store.fetch(name, face_ids)

    def fetch_all(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        self.fetch_all_calls += 1
        return self.store.fetch_all(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @property
    def store(self) -> VectorStore:
        assert self._store is not None
        return self._store


@pytest.fixture(scope="module")
def faces_today(lfw_dev_arcface: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, identity per face, rows arriving today): every lfw-dev photo's main face."""
    vectors = lfw_dev_arcface["vectors"].astype(np.float32)
    identities = np.unique(lfw_dev_arcface["identities"], return_inverse=True)[1]
    today = np.sort(np.random.default_rng(0).permutation(len(vectors))[: int(NEW_SHARE * len(vectors))])
    return vectors, identities, today


def add_faces(library: Library, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Photos with one face each, written as detection writes them; returns the new face ids."""
    with library.db.session() as session:
        first = (session.scalar(select(Image.id).order_by(Image.id.desc()).limit(1)) or 0) + 1
        image_ids = list(range(first, first + len(rows)))
        session.execute(
            insert(Image),
            [
                {"id": i, "path": f"/lfw/{i}-{r}.jpg", "size_bytes": 1, "mtime": 0.0, "status": "done"}
                for i, r in zip(image_ids, rows.tolist(), strict=True)
            ],
        )
        face_rows: list[dict[str, object]] = [
            {
                "image_id": i,
                "bbox_x": 0,
                "bbox_y": 0,
                "bbox_w": 100,
                "bbox_h": 100,
                "detection_score": 0.9,
                "quality": 1.0,
                "embedding_space": SPACE,
            }
            for i in image_ids
        ]
        face_ids = insert_faces(session, face_rows)
    with library.vectors() as store:
        store.ensure_collection(SPACE, vectors.shape[1])
        payloads = [
            {"image_id": i, "person_id": None, "cluster_id": f"unknown_noise_{f}"}
            for i, f in zip(image_ids, face_ids.tolist(), strict=True)
        ]
        store.upsert(SPACE, face_ids, vectors[rows], payloads)
    return face_ids


def open_library(root: Path, **settings: object) -> Library:
    return Library.from_settings(
        load_settings(
            photos_dir=root / "photos", data_dir=root / "data", database_url=None, qdrant_url=None, **settings
        )
    )


@pytest.fixture(scope="module")
def yesterday(faces_today: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library of yesterday's faces after its full cluster-dual run (one person named, then run again)."""
    vectors, identities, today = faces_today
    root = tmp_path_factory.mktemp("yesterday")
    library = open_library(root)
    with library.db.session() as session:
        space_registry.register_raw_space(session, EmbeddingSpaceInfo(SPACE, "buffalo_s", 512))
    old = np.setdiff1d(np.arange(len(vectors)), today)
    face_ids = add_faces(library, vectors, old)
    np.save(root / "identity_by_face.npy", np.c_[face_ids, identities[old]])
    cluster_dual(library)
    # a user names a few faces of the largest group: labels change, so this second run is full again
    for face in members(library, largest_group(library))[:4]:
        label_face(library, face, "Ann")
    report = cluster_dual(library)[1]
    assert report.mode == "full" and "labels" in report.reason
    library.close()
    return root


@pytest.fixture
def library(yesterday: Path, tmp_path: Path) -> Iterator[Library]:
    shutil.copytree(yesterday, tmp_path / "lib")
    context = open_library(tmp_path / "lib")
    yield context
    context.close()


def cluster_dual(
    library: Library, counting: CountingStore | None = None, **kw: Any
) -> tuple[AssignReport, ClusterReport]:
    """person_centroids, supervised_assignments, unknown_clusters (the steps that read vectors)."""
    with library.vectors() as vectors:
        compute_person_centroids(library, vectors)
        used: Any = counting.attach(vectors) if counting else vectors
        return assign_known_faces(library, used, **kw), cluster_unknown_faces(library, used, **kw)


def largest_group(library: Library) -> str:
    sizes = Counter(c for _, c, _ in state(library).values() if c.startswith(UNKNOWN_PREFIX))
    return sizes.most_common(1)[0][0]


def members(library: Library, cluster: str) -> list[int]:
    return sorted(f for f, (_, c, _) in state(library).items() if c == cluster)


def state(library: Library) -> dict[int, tuple[str | None, str, bool]]:
    with library.db.session() as session:
        rows = session.execute(
            select(FaceInstance.id, FaceInstance.person_id, FaceInstance.cluster_id, FaceInstance.user_confirmed)
        ).all()
    return {r.id: (r.person_id, r.cluster_id, r.user_confirmed) for r in rows}


def partition(groups: dict[int, tuple[str | None, str, bool]]) -> set[frozenset[int]]:
    """The grouping as a set of face sets (cluster numbers aside): each person, each unknown cluster, each
    face alone."""
    members: dict[str, set[int]] = {}
    for face, (_, cluster, _) in groups.items():
        members.setdefault(cluster, set()).add(face)
    return {frozenset(m) for m in members.values()}


def next_free(library: Library) -> int:
    with library.db.session() as session:
        row = session.get(PipelineState, NEXT_CLUSTER_KEY)
        return int(row.value["next"]) if row else 1


def arrive(library: Library, faces_today: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    vectors, _, today = faces_today
    return add_faces(library, vectors, today)


def test_new_faces_are_grouped_as_a_full_run_groups_them_reading_only_their_vectors(
    library: Library, faces_today: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
):
    new = arrive(library, faces_today)
    library.close()
    shutil.copytree(tmp_path / "lib", tmp_path / "same")  # the same library, grouped in full below
    library = open_library(tmp_path / "lib")
    counting = CountingStore()
    assign, clusters = cluster_dual(library, counting)
    assert (assign.mode, clusters.mode) == ("incremental", "incremental"), (assign.reason, clusters.reason)
    assert clusters.new_faces > 0 and clusters.touched > 0
    assert clusters.reason.startswith(f"incremental: {clusters.new_faces:,} new faces, {clusters.touched:,}")
    assert counting.fetch_all_calls == 0
    assert set(counting.fetched) <= set(new.tolist())  # the new faces' vectors, nothing else
    assert set(new.tolist()) - set(counting.fetched) == set()  # each new face was matched

    full = open_library(tmp_path / "same")
    assign_full, clusters_full = cluster_dual(full, full=True)
    assert (assign_full.mode, clusters_full.reason) == ("full", "full: asked for (--full)")
    incremental_groups, full_groups = state(library), state(full)
    assert partition(incremental_groups) == partition(full_groups)
    assert clusters.clusters == clusters_full.clusters and clusters.noise == clusters_full.noise
    full.close()


def test_group_numbers_stay_and_new_groups_take_never_used_numbers(
    library: Library, faces_today: tuple[np.ndarray, np.ndarray, np.ndarray]
):
    before = state(library)
    first_free = next_free(library)
    new = arrive(library, faces_today)
    cluster_dual(library)
    after = state(library)
    old_groups = {c for _, c, _ in before.values() if c.startswith(UNKNOWN_PREFIX)}
    # every old group keeps its number for its old faces, unless it merged into a larger one
    moved = [f for f, (_, c, _) in before.items() if c.startswith(UNKNOWN_PREFIX) and after[f][1] != c]
    assert all(after[f][1] in old_groups for f in moved)
    assert len(moved) < 0.05 * sum(c.startswith(UNKNOWN_PREFIX) for _, c, _ in before.values())
    fresh = {c for f, (_, c, _) in after.items() if f in set(new.tolist()) and c.startswith(UNKNOWN_PREFIX)}
    fresh -= old_groups
    assert fresh, "some of today's people are new: their groups need numbers"
    numbers = sorted(int(parse_cluster_id(c)[1]) for c in fresh)
    assert numbers == list(range(first_free, first_free + len(fresh)))
    assert next_free(library) == first_free + len(fresh)


def test_user_decisions_survive_an_incremental_run(
    library: Library, faces_today: tuple[np.ndarray, np.ndarray, np.ndarray]
):
    before = state(library)
    ann = next(p for p, _, confirmed in before.values() if confirmed)
    matched = [f for f, (p, _, confirmed) in before.items() if p == ann and not confirmed]
    assert matched, "Ann's prototypes matched more of her faces"
    reject_face(library, matched[0])  # "not Ann": no label changes, so the run stays incremental
    arrive(library, faces_today)
    assign, clusters = cluster_dual(library)
    assert (assign.mode, clusters.mode) == ("incremental", "incremental"), (assign.reason, clusters.reason)
    after = state(library)
    assert after[matched[0]][0] != ann
    assert all(after[f] == before[f] for f, (_, _, confirmed) in before.items() if confirmed)
    assert all(after[f][0] == ann for f in matched[1:])
    assert sum(p == ann and not confirmed for p, _, confirmed in after.values()) > len(matched) - 1  # new ones too


def test_a_run_falls_back_to_full_and_says_why(
    library: Library, faces_today: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
):
    arrive(library, faces_today)
    # labels changed since the index's run
    label_cluster(library, largest_group(library), "Bo")
    assign, clusters = cluster_dual(library)
    assert assign.mode == clusters.mode == "full"
    assert clusters.reason == "full: labels, prototypes or thresholds changed since the last run"
    # another grouping rule: always full, and the kept index is dropped ...
    clusters = cluster_unknown_faces_now(library, method="hdbscan", min_cluster_size=3)
    assert clusters.mode == "full" and "not the link rule" in clusters.reason
    # ... so the next link-rule run is full too
    assert cluster_dual(library)[1].reason == "full: no kept index of the unknown faces"
    assert cluster_dual(library)[1].mode == "incremental"
    # the index missing, or damaged
    for path in library.settings.cluster_index_dir.glob("*.meta.npz"):
        path.write_bytes(b"damaged")
    assert cluster_dual(library)[1].reason == "full: no kept index of the unknown faces"
    # the index grew past FACE_CLUSTER_REBUILD_GROWTH since its build
    arrive(library, faces_today)  # today's photos once more, as copies
    assert cluster_dual(library)[1].mode == "incremental"
    strict = dataclasses.replace(library, settings=library.settings.model_copy(update={"cluster_rebuild_growth": 0.05}))
    assert cluster_dual(strict)[1].reason.startswith("full: the index grew")
    # FACE_CLUSTER_MODE=full
    forced = dataclasses.replace(library, settings=library.settings.model_copy(update={"cluster_mode": "full"}))
    assert [r.reason for r in cluster_dual(forced)] == ["full: FACE_CLUSTER_MODE=full"] * 2


def cluster_unknown_faces_now(library: Library, **kw: Any) -> ClusterReport:
    with library.vectors() as vectors:
        return cluster_unknown_faces(library, vectors, **kw)


def test_a_space_switch_runs_full(library: Library):
    projected = "insightface_buffalo_s_head1"
    with library.db.session() as session:
        faces = session.execute(select(FaceInstance).order_by(FaceInstance.id)).scalars().all()
        payloads = [{"image_id": f.image_id, "person_id": f.person_id, "cluster_id": f.cluster_id} for f in faces]
    with library.vectors() as store:  # a trained head that happens to be the identity: the same vectors
        ids, vectors = store.fetch_all(SPACE)
        store.ensure_collection(projected, vectors.shape[1])
        store.upsert(projected, ids, vectors, payloads)
    verdict = GateVerdict(True, "test")
    with library.db.session() as session:
        space_registry.register_checkpoint(
            session,
            name=projected,
            base_space=SPACE,
            model_name="buffalo_s",
            dim=vectors.shape[1],
            checkpoint_path="checkpoints/head1.pt",
            gate=GateResult(True, "test", verdict, verdict),
            thresholds=SpaceThresholds(0.45, 0.02, 0.6, cluster_method="dbscan", min_cluster_size=2),
            label_count=1,
        )
    space_registry.activate(library.db, projected)
    assign, clusters = cluster_dual(library)
    assert clusters.mode == "full"
    assert clusters.reason == f"full: the embedding space changed since the last run ({SPACE} -> {projected})"
    assert cluster_dual(library)[1].mode == "incremental"  # the new space's own index from now on


def test_cli_cluster_dual_full_forces_a_full_run_and_says_so(
    library: Library,
    faces_today: tuple[np.ndarray, np.ndarray, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    from typer.testing import CliRunner

    from face_pipeline.cli import app

    arrive(library, faces_today)
    library.close()
    monkeypatch.setenv("FACE_PHOTOS_DIR", str(tmp_path / "lib" / "photos"))
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path / "lib" / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.delenv("FACE_CLUSTER_MODE", raising=False)
    forced = CliRunner().invoke(app, ["faces", "cluster-dual", "--full"])
    assert forced.exit_code == 0, forced.output
    lines = forced.output.splitlines()
    assert any(line.startswith("assigned: ") and "full: asked for (--full)" in line for line in lines), lines
    assert any(line.startswith("unknown: ") and "full: asked for (--full)" in line for line in lines), lines
    after = open_library(tmp_path / "lib")  # the daily run after it is incremental again
    assert cluster_dual(after)[1].mode == "incremental"
    after.close()


def test_prototypes_are_kept_while_the_confirmed_labels_stay_the_same(library: Library):
    with library.vectors() as vectors:
        assert compute_person_centroids(library, vectors).reused  # yesterday's run built them from these labels
    stranger = next(f for f, (person, _, _) in state(library).items() if person is None)
    label_face(library, stranger, "Cy")
    with library.vectors() as vectors:
        rebuilt = compute_person_centroids(library, vectors)
        again = compute_person_centroids(library, vectors)
    assert not rebuilt.reused and rebuilt.people == 2
    assert again.reused and (again.people, again.prototypes) == (rebuilt.people, rebuilt.prototypes)
