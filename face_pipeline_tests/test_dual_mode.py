"""Dual-mode clustering on real lfw-mini faces: each rule of the issue, through the services.

lfw-mini holds 12 people with 8 photos each and 24 strangers. A library is ingested once per module (with
the default model, InsightFace buffalo_s) and copied for each test, so tests stay independent without
re-running the face model. ArcFace's scale: the same person ~0.6, different people ~0.0 (lfw-mini: every
different-person pair under 0.26). One test runs the dual-mode flow on a dlib library, the licence-free choice.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select, update

from face_pipeline.domain.clustering import NOISE
from face_pipeline.domain.naming import UNKNOWN_PREFIX, noise_cluster_id, parse_cluster_id, person_cluster_id
from face_pipeline.domain.neighbors import FaceIndex
from face_pipeline.services import clustering as clustering_service
from face_pipeline.services import known_people as known_people_service
from face_pipeline.services.cluster_dual import run_cluster_dual
from face_pipeline.services.clustering import cluster_unknown_faces
from face_pipeline.services.integrity import user_label_overrides
from face_pipeline.services.known_people import assign_known_faces, compute_person_centroids
from face_pipeline.services.labels import label_cluster, label_face, reject_face
from face_pipeline.services.library import Library
from face_pipeline.services.person_edits import set_ignored
from face_pipeline.storage.models import FaceAssignmentEvent, FaceInstance
from face_pipeline.storage.models import Image as ImageRow
from face_pipeline_eval.main_face import main_face_paths
from face_pipeline_tests.photo_corpus import copy_mini_library, copy_people
from face_pipeline_tests.test_ingest import ingest, make_context


def cluster_dual(context: Library, **assign: float) -> None:
    with context.vectors() as vectors:
        run_cluster_dual(context, vectors, **assign)  # type: ignore[arg-type]


def faces(context: Library) -> dict[int, dict[str, object]]:
    """face id -> row facts plus `who`: the photo's folder for the photo's main face, else None."""
    main = main_face_paths(context.db)
    with context.db.session() as session:
        rows = session.scalars(select(FaceInstance)).all()
    return {
        face.id: {
            "who": main[face.id].parent.name if face.id in main else None,
            "person": face.person_id,
            "cluster": face.cluster_id,
            "source": face.assignment_source,
            "confirmed": face.user_confirmed,
            "image": face.image_id,
        }
        for face in rows
    }


def assert_one_valid_cluster_each(state: dict[int, dict[str, object]]) -> None:
    for face_id, f in state.items():
        assert f["cluster"], f"face {face_id} has no cluster"
        kind, value = parse_cluster_id(str(f["cluster"]))
        if kind == "person":
            assert f["person"] == value, face_id
        else:
            assert f["person"] is None, face_id
        if kind == "noise":
            assert value == str(face_id)


def faces_of(state: dict[int, dict[str, object]], who: str) -> list[int]:
    return sorted(i for i, f in state.items() if f["who"] == who)


@pytest.fixture(scope="module")
def mini_data(lfw_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lfw-mini's 12 people (6 photos each, 2 held back as later arrivals) and its strangers, ingested once."""
    root = tmp_path_factory.mktemp("dual")
    photos = root / "photos"
    copy_mini_library(lfw_mini, photos)
    context = make_context(root, photos, workers=2)
    ingest(context)
    context.close()
    return root


@pytest.fixture
def library(mini_data: Path, tmp_path: Path) -> Iterator[Library]:
    shutil.copytree(mini_data, tmp_path / "lib")
    context = make_context(tmp_path / "lib", tmp_path / "lib" / "photos")
    with context.db.session() as session:  # the copy's photos live under the copy
        session.execute(
            update(ImageRow).values(path=func.replace(ImageRow.path, str(mini_data), str(tmp_path / "lib")))
        )
    yield context
    context.close()


def test_first_run_groups_each_person_and_leaves_every_face_one_cluster(library: Library):
    cluster_dual(library)
    state = faces(library)
    assert_one_valid_cluster_each(state)
    by_cluster: dict[str, Counter[str]] = {}
    for f in state.values():
        if f["who"] and str(f["cluster"]).startswith("unknown_cluster_"):
            by_cluster.setdefault(str(f["cluster"]), Counter())[str(f["who"])] += 1
    assert len(by_cluster) >= 10  # 12 people with 6 photos each
    purity = sum(c.most_common(1)[0][1] for c in by_cluster.values()) / sum(
        sum(c.values()) for c in by_cluster.values()
    )
    assert purity >= 0.95
    photos_per_person = Counter(str(f["who"]) for f in state.values() if f["who"])
    strangers = [f for f in state.values() if f["who"] and photos_per_person[str(f["who"])] == 1]
    assert len(strangers) >= 20
    assert sum(str(f["cluster"]).startswith("unknown_cluster_") for f in strangers) <= 2


def test_labelled_faces_find_the_rest_of_the_person_and_nobody_else(library: Library):
    state = faces(library)
    people = sorted({str(f["who"]) for f in state.values() if f["who"] and len(faces_of(state, str(f["who"]))) >= 6})
    for who in people[:6]:
        for face_id in faces_of(state, who)[:3]:
            label_face(library, face_id, who.replace("_", " "))
    cluster_dual(library, person_threshold=0.35)  # the mechanism, not the default's recall/precision trade-off
    state = faces(library)
    assert_one_valid_cluster_each(state)
    supervised = [f for f in state.values() if f["source"] == "supervised"]
    with library.db.session() as session:
        from face_pipeline.storage.models import Person

        names = {p.id: p.name for p in session.scalars(select(Person))}
    correct = [f for f in supervised if f["who"] and names[str(f["person"])] == str(f["who"]).replace("_", " ")]
    wrong = [f for f in supervised if f["who"] and f not in correct]
    remaining = sum(len(faces_of(state, who)) - 3 for who in people[:6])
    assert not wrong, wrong
    # 3 prototypes each: measured, the person's other faces score 0.56+ and other people's 0.24 at most.
    assert len(correct) == remaining


def test_threshold_and_margin_gate_assignment(library: Library):
    state = faces(library)
    people = sorted({str(f["who"]) for f in state.values() if f["who"] and len(faces_of(state, str(f["who"]))) >= 6})
    for who in people[:3]:
        for face_id in faces_of(state, who)[:3]:
            label_face(library, face_id, who)

    def assigned(**params: float) -> int:
        cluster_dual(library, **params)
        return sum(1 for f in faces(library).values() if f["source"] == "supervised")

    assert assigned(person_threshold=0.999) == 0
    assert assigned(person_threshold=0.3, person_margin=0.8) == 0  # no face leads its runner-up by 0.8 (max 0.69)
    assert assigned(person_threshold=0.3, person_margin=0.0) >= 9  # 3 people's 3 other photos, scores 0.56+


def test_one_face_per_person_per_photo(library: Library):
    state = faces(library)
    who = sorted({str(f["who"]) for f in state.values() if f["who"] and len(faces_of(state, str(f["who"]))) >= 6})[0]
    photos = library.settings.photos_dir
    with library.db.session() as session:  # two photos with no one else in the background
        alone = session.scalars(
            select(ImageRow.path)
            .where(ImageRow.path.like(f"%/{who}/%"), ImageRow.face_count == 1)
            .order_by(ImageRow.path)
        ).all()
    pair = [Path(path) for path in alone[-2:]]
    side_by_side = Image.new("RGB", (500, 250))
    for i, path in enumerate(pair):
        side_by_side.paste(Image.open(path), (250 * i, 0))
    side_by_side.save(photos / "two_of_the_same.jpg")
    ingest(library)
    for face_id in faces_of(state, who)[:4]:
        label_face(library, face_id, who)
    cluster_dual(library, person_threshold=0.3)  # both copies of the person score above it

    with library.db.session() as session:
        image_id = session.scalar(select(ImageRow.id).where(ImageRow.path.like("%two_of_the_same.jpg")))
        rows = session.scalars(select(FaceInstance).where(FaceInstance.image_id == image_id)).all()
    assert len(rows) == 2
    named = [f for f in rows if f.person_id is not None]
    assert len(named) == 1 and named[0].assignment_source == "supervised"
    assert all(f.cluster_id for f in rows)


def test_rejection_is_remembered_and_user_labels_are_never_changed(library: Library):
    state = faces(library)
    people = sorted({str(f["who"]) for f in state.values() if f["who"] and len(faces_of(state, str(f["who"]))) >= 6})
    alice, bob = people[0], people[1]
    for face_id in faces_of(state, alice)[:3]:
        label_face(library, face_id, "Alice")
    wrong_label = faces_of(state, bob)[0]
    label_face(library, wrong_label, "Alice")  # a user's mistake is still the user's decision
    cluster_dual(library)
    state = faces(library)
    matched = [i for i in faces_of(state, alice) if state[i]["source"] == "supervised"]
    assert matched, "no face of Alice was matched"
    rejected = matched[0]
    reject_face(library, rejected)

    for _ in range(2):
        cluster_dual(library, person_threshold=0.3, person_margin=0.0)
        state = faces(library)
        alice_id = state[faces_of(state, alice)[0]]["person"]
        assert state[rejected]["person"] != alice_id
        assert state[wrong_label]["person"] == alice_id and state[wrong_label]["confirmed"]
        assert_one_valid_cluster_each(state)
    with library.db.session() as session:
        automatic = session.scalar(
            select(func.count()).where(FaceAssignmentEvent.face_id == wrong_label, FaceAssignmentEvent.source != "user")
        )
    assert automatic == 0


def test_a_name_given_while_clustering_computes_is_kept(library: Library, monkeypatch: pytest.MonkeyPatch):
    """The race issue 13 found: a user names a group between the run's read of the faces and its write. Made
    deterministic: the clustering step names the group from inside its computation, then (to force a write of
    every face it read) calls every face noise. The user's name must win; no automatic event may follow it."""
    cluster_dual(library)
    state = faces(library)
    group = next(str(f["cluster"]) for f in state.values() if str(f["cluster"]).startswith(UNKNOWN_PREFIX))
    members = sorted(i for i, f in state.items() if f["cluster"] == group)
    original = clustering_service.cluster_unknown_indexed  # the ArcFace spaces group by the link rule

    def user_names_the_group_meanwhile(matrix: np.ndarray, **kwargs: object) -> tuple[np.ndarray, FaceIndex]:
        _, index = original(matrix, **kwargs)
        label_cluster(library, group, "Named Meanwhile")
        return np.full(matrix.shape[0], NOISE, dtype=np.int64), index

    monkeypatch.setattr(clustering_service, "cluster_unknown_indexed", user_names_the_group_meanwhile)
    with library.db.session() as session:
        before = session.scalar(select(func.max(FaceAssignmentEvent.id)))
    with library.vectors() as vectors:
        cluster_unknown_faces(library, vectors, full=True)  # the full run's computation is where the user acts
    state = faces(library)
    person = state[members[0]]["person"]
    assert person is not None
    for face_id in members:
        assert state[face_id]["person"] == person and state[face_id]["confirmed"], face_id
        assert state[face_id]["cluster"] == person_cluster_id(person)
    assert user_label_overrides(library.db).passed
    with library.db.session() as session:
        automatic = session.scalar(
            select(func.count()).where(
                FaceAssignmentEvent.id > before,
                FaceAssignmentEvent.face_id.in_(members),
                FaceAssignmentEvent.source != "user",
            )
        )
    assert automatic == 0


def test_a_face_ignored_while_clustering_computes_stays_alone(library: Library, monkeypatch: pytest.MonkeyPatch):
    """A user marks a grouped face "ignore" between the run's read and its write; the run, which puts every
    face it read into one group, must leave the ignored face alone (its own singleton, ignored)."""
    cluster_dual(library)
    state = faces(library)
    groups = Counter(str(f["cluster"]) for f in state.values() if str(f["cluster"]).startswith(UNKNOWN_PREFIX))
    # the merged group keeps the number of the first group: a face of the last one would change group
    last = max(groups, key=lambda c: (-groups[c], int(parse_cluster_id(c)[1])))
    ignored = next(i for i, f in state.items() if f["cluster"] == last)
    original = clustering_service.cluster_unknown_indexed  # the ArcFace spaces group by the link rule

    def user_ignores_a_face_meanwhile(matrix: np.ndarray, **kwargs: object) -> tuple[np.ndarray, FaceIndex]:
        _, index = original(matrix, **kwargs)
        assert set_ignored(library, [ignored], True) == [ignored]
        return np.zeros(matrix.shape[0], dtype=np.int64), index  # one big group

    monkeypatch.setattr(clustering_service, "cluster_unknown_indexed", user_ignores_a_face_meanwhile)
    with library.vectors() as vectors:
        cluster_unknown_faces(library, vectors, full=True)  # the full run's computation is where the user acts
    with library.db.session() as session:
        row = session.get(FaceInstance, ignored)
        assert row is not None and row.ignored and row.cluster_id == noise_cluster_id(ignored)
        grouped = session.scalar(
            select(func.count()).where(FaceInstance.cluster_id.startswith(UNKNOWN_PREFIX, autoescape=True))
        )
    assert grouped and grouped > 1  # the rest were written


def test_a_rejection_made_while_assigning_is_kept(library: Library, monkeypatch: pytest.MonkeyPatch):
    """The same race for the supervised step: the user rules a face out for a person while the step computes
    that it is that person. The rejection wins."""
    state = faces(library)
    people = sorted({str(f["who"]) for f in state.values() if f["who"] and len(faces_of(state, str(f["who"]))) >= 6})
    for face_id in faces_of(state, people[0])[:3]:
        label_face(library, face_id, "Alice")
    with library.vectors() as vectors:
        compute_person_centroids(library, vectors)
    alice = faces(library)[faces_of(state, people[0])[0]]["person"]
    ruled_out: list[int] = []
    original = known_people_service._assignment_changes

    def user_rejects_a_match_meanwhile(table, candidates, matched, scores):  # type: ignore[no-untyped-def]
        face_id = int(table.ids[candidates[matched == alice]][0])
        reject_face(library, face_id, str(alice))
        ruled_out.append(face_id)
        return original(table, candidates, matched, scores)

    monkeypatch.setattr(known_people_service, "_assignment_changes", user_rejects_a_match_meanwhile)
    with library.vectors() as vectors:
        assign_known_faces(library, vectors, person_threshold=0.3, person_margin=0.0)
    state = faces(library)
    assert ruled_out and state[ruled_out[0]]["person"] != alice
    assert sum(1 for f in state.values() if f["person"] == alice) >= 4  # the other matches were written


def test_cluster_numbers_stay_with_their_group_across_runs_and_new_photos(library: Library, lfw_mini: Path):
    cluster_dual(library)
    first = {i: f["cluster"] for i, f in faces(library).items()}
    cluster_dual(library)
    assert {i: f["cluster"] for i, f in faces(library).items()} == first

    photos = library.settings.photos_dir
    for person in sorted((photos / "people").iterdir()):  # the two held-back photos arrive
        for source in sorted((lfw_mini / person.name).glob("*.jpg"))[6:8]:
            shutil.copy(source, person / source.name)
    ingest(library)
    cluster_dual(library)
    after = faces(library)
    kept = [i for i, c in first.items() if str(c).startswith("unknown_cluster_")]
    same = sum(after[i]["cluster"] == first[i] for i in kept)
    assert same >= 0.95 * len(kept)
    grown = Counter(str(f["cluster"]) for f in after.values())
    assert max(grown.values()) == 8  # the groups took in their new photos


def test_labelling_a_stale_cluster_changes_nothing(library: Library):
    cluster_dual(library)
    with library.db.session() as session:
        members = session.scalars(select(FaceInstance.id).where(FaceInstance.cluster_id == "unknown_cluster_1")).all()
    from face_pipeline.errors import Conflict

    with pytest.raises(Conflict, match="changed since it was loaded"):
        label_cluster(library, "unknown_cluster_1", "Carol", expected_face_ids=members[:-1])
    assert not any(f["confirmed"] for f in faces(library).values())
    result = label_cluster(library, "unknown_cluster_1", "Carol", expected_face_ids=members)
    assert result.faces_labelled == len(members)


@pytest.mark.postgres
def test_dual_mode_on_postgresql(tmp_path: Path, lfw_mini: Path, postgres_url: str):
    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos, people=4, photos_each=6)
    context = make_context(tmp_path, photos, postgres_url, workers=2)
    ingest(context)
    cluster_dual(context)
    state = faces(context)
    assert_one_valid_cluster_each(state)
    unknown = {str(f["cluster"]) for f in state.values() if str(f["cluster"]).startswith("unknown_cluster_")}
    assert len(unknown) >= 3
    first = sorted(unknown)[0]
    labelled = label_cluster(context, first, "Dana").faces_labelled
    rejected = next(i for i, f in faces(context).items() if f["confirmed"])
    dana = reject_face(context, rejected)
    cluster_dual(context, person_threshold=0.3, person_margin=0.0)
    state = faces(context)
    assert_one_valid_cluster_each(state)
    assert sum(1 for f in state.values() if f["confirmed"]) == labelled - 1
    assert state[rejected]["person"] != dana
    context.close()


def test_groups_of_two_are_allowed_when_asked_for(library: Library):
    with library.vectors() as vectors:
        report = cluster_unknown_faces(library, vectors, min_cluster_size=2)
    assert report.clusters >= 10 and min(report.sizes) >= 2
    assert_one_valid_cluster_each(faces(library))


def test_dual_mode_on_a_dlib_library(tmp_path: Path, lfw_mini: Path):
    """The same flow in dlib's space (FACE_EMBEDDER=dlib, the licence-free choice), at dlib's own default
    thresholds: its cosines sit far higher (the same person ~0.95, different people ~0.84)."""
    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos, people=4, photos_each=6)
    context = make_context(tmp_path, photos, embedder="dlib", workers=2)
    _, detected = ingest(context)
    assert detected.space == "dlib_resnet_v1"
    cluster_dual(context)
    state = faces(context)
    assert_one_valid_cluster_each(state)
    by_cluster: dict[str, Counter[str]] = {}
    for f in state.values():
        if f["who"] and str(f["cluster"]).startswith("unknown_cluster_"):
            by_cluster.setdefault(str(f["cluster"]), Counter())[str(f["who"])] += 1
    assert len(by_cluster) >= 3 and all(len(c) == 1 for c in by_cluster.values()), by_cluster

    people = sorted({str(f["who"]) for f in state.values() if f["who"]})
    for face_id in faces_of(state, people[0])[:3]:
        label_face(context, face_id, "Erin")
    cluster_dual(context)  # dlib's default threshold and margin
    state = faces(context)
    assert_one_valid_cluster_each(state)
    erin = state[faces_of(state, people[0])[0]]["person"]
    named = [f for f in state.values() if f["person"] == erin and not f["confirmed"]]
    assert named and all(f["who"] == people[0] for f in named), named
    context.close()


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_gathering_rows_in_place_gives_the_fancy_indexed_rows(monkeypatch, chunk: int) -> None:
    # the clustering step takes the pool's vectors out of the run's read in place (no second copy)
    from face_pipeline.services import run_params

    monkeypatch.setattr(run_params, "GATHER_CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    matrix = rng.standard_normal((50, 4)).astype(np.float16)
    for rows in (np.arange(50), np.sort(rng.choice(50, 31, replace=False)), np.array([49]), np.empty(0, int)):
        expected = matrix[rows].copy()
        work = matrix.copy()
        gathered = run_params.gather_rows_in_place(work, rows)
        np.testing.assert_array_equal(gathered, expected)
        assert gathered.base is work or gathered is work or len(rows) == 0 or np.shares_memory(gathered, work)
    with pytest.raises(ValueError, match="ascending"):
        run_params.gather_rows_in_place(matrix.copy(), np.array([3, 2]))
