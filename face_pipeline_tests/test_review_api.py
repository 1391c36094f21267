"""The review page's API (issue 15) over real state: lfw-mini ingested with the real default model (buffalo_s),
grouped by the cluster-dual sequence; SQLite, one library per module, each test taking faces of its own."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from face_pipeline.services.browse import suggest_faces
from face_pipeline.services.export import faces_frame
from face_pipeline.services.library import Library
from face_pipeline.services.vector_cache import FaceVectors
from face_pipeline.storage.models import FaceInstance, FaceRejection, Person, utcnow
from face_pipeline_tests.test_api import API, face_folders, group_faces, make_client, sqlite_library

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ARCFACE_THRESHOLD = 0.45  # buffalo_s's own person threshold (domain/assignment.py): the floor


class Review:
    def __init__(self, context: Library, client: Any) -> None:
        self.context, self.client = context, client
        self.folders = face_folders(context)
        self.taken: set[str] = set()

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, f"{API}{path}", **kwargs)
        assert response.status_code < 300, (path, response.status_code, response.text)
        return response.json()

    def take_cluster(self, min_size: int = 3) -> dict[str, Any]:
        clusters = self.ok("GET", "/faces/clusters", params={"type": "unknown", "limit": 500})["items"]
        for cluster in clusters:
            if cluster["size"] >= min_size and cluster["cluster_id"] not in self.taken:
                self.taken.add(cluster["cluster_id"])
                return self.ok("GET", f"/faces/clusters/{cluster['cluster_id']}", params={"limit": 500})
        pytest.fail(f"no untouched unknown cluster of {min_size}+ faces left")

    def named_with_held_back(self, name: str, held: int = 2) -> tuple[str, list[int]]:
        """Name a group after taking `held` faces of its main identity out: those are then the suggestions."""
        cluster = self.take_cluster(min_size=held + 3)
        faces = [f["face_id"] for f in cluster["faces"]["items"]]
        folder = Counter(self.folders.get(f) for f in faces).most_common(1)[0][0]
        held_back = [f for f in faces if self.folders.get(f) == folder][-held:]
        for face_id in held_back:
            self.ok("POST", f"/faces/{face_id}/remove-from-cluster")
        person = self.ok("POST", f"/faces/clusters/{cluster['cluster_id']}/label", json={"name": name})["person_id"]
        return person, held_back

    def state(self) -> tuple[pd.DataFrame, list[tuple[int, str]], list[tuple[str, str, str, str | None]]]:
        """What `faces export` writes, plus the rejections and people: undo must restore all of it."""
        with self.context.db.session() as session:
            rejections = sorted(session.execute(select(FaceRejection.face_id, FaceRejection.person_id)).tuples())
            people = sorted(session.execute(select(Person.id, Person.name, Person.status, Person.merged_into)).tuples())
        return faces_frame(self.context.db), rejections, people


@pytest.fixture(scope="module")
def review(lfw_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Review]:
    context = sqlite_library(tmp_path_factory, lfw_mini)
    group_faces(context)
    with make_client(context) as client:
        yield Review(context, client)
    context.close()


def test_suggestions_are_ranked_scored_and_never_under_the_spaces_floor(review: Review):
    person, held_back = review.named_with_held_back("Sue Floor")
    raw = suggest_faces(review.context, person, limit=200)  # the ranking without a floor
    found = review.ok("GET", f"/persons/{person}/suggestions", params={"limit": 200})
    assert found["floor"] == pytest.approx(ARCFACE_THRESHOLD)
    scores = [s["score"] for s in found["items"]]
    assert scores == sorted(scores, reverse=True) and all(s >= ARCFACE_THRESHOLD for s in scores)
    assert found["total"] == len(found["items"])
    under = [s.face.face_id for s in raw.items if s.score < ARCFACE_THRESHOLD]
    assert under, "the unfloored ranking reaches strangers under the threshold"
    assert not set(under) & {s["face"]["face_id"] for s in found["items"]}
    assert set(held_back) <= {s["face"]["face_id"] for s in found["items"]}  # the person's own faces pass it

    # A cut above the floor: fewer faces, all at or above it.
    cut = review.ok("GET", f"/persons/{person}/suggestions", params={"min_score": 0.99})
    assert cut["min_score"] == 0.99 and all(s["score"] >= 0.99 for s in cut["items"])

    # "No" is remembered: the face never comes back for this person.
    rejected = held_back[0]
    review.ok("POST", f"/faces/{rejected}/reject", json={"person_id": person})
    again = review.ok("GET", f"/persons/{person}/suggestions", params={"limit": 200})
    assert rejected not in {s["face"]["face_id"] for s in again["items"]}
    assert again["total"] == found["total"] - 1


def test_accepting_all_above_a_score_takes_only_the_faces_shown_that_still_reach_it(review: Review):
    person, held_back = review.named_with_held_back("Ann Accept")
    shown = review.ok("GET", f"/persons/{person}/suggestions", params={"limit": 50})["items"]
    cut = min(s["score"] for s in shown if s["face"]["face_id"] in held_back)
    above = [s["face"]["face_id"] for s in shown if s["score"] >= cut]
    stranger = next(
        f for f, folder in review.folders.items() if f not in above and folder != review.folders[held_back[0]]
    )
    result = review.ok(
        "POST", f"/persons/{person}/suggestions/accept", json={"face_ids": [*above, stranger], "min_score": cut}
    )
    assert sorted(result["accepted"]) == sorted(above) and result["skipped"] == [stranger]
    faces = review.ok("GET", f"/faces/clusters/person_{person}", params={"limit": 500})["faces"]["items"]
    assert set(above) <= {f["face_id"] for f in faces}
    low = review.client.post(
        f"{API}/persons/{person}/suggestions/accept", json={"face_ids": [stranger], "min_score": 2}
    )
    assert low.status_code == 422


def test_faces_on_their_own_are_paged_by_best_guess_and_can_be_named(review: Review):
    person, held_back = review.named_with_held_back("Gus Guess", held=1)
    first = review.ok("GET", "/faces/singletons", params={"limit": 10})
    with review.context.db.session() as session:
        alone = session.scalars(
            select(FaceInstance.id).where(
                FaceInstance.person_id.is_(None),
                FaceInstance.ignored.is_(False),
                FaceInstance.cluster_id.like("unknown\\_noise\\_%", escape="\\"),
            )
        ).all()
    assert first["total"] == len(alone) and first["floor"] == pytest.approx(ARCFACE_THRESHOLD)
    everything = review.ok("GET", "/faces/singletons", params={"limit": 500})["items"]
    assert len(everything) == len(alone) and {s["face"]["face_id"] for s in everything} == set(alone)
    best = [s["best_score"] if s["best_score"] is not None else -2 for s in everything]
    assert best == sorted(best, reverse=True)
    assert all(s["guess"] is None or s["guess"]["score"] >= ARCFACE_THRESHOLD for s in everything)
    guessed = next(s for s in everything if s["face"]["face_id"] == held_back[0])
    assert guessed["guess"] is not None and guessed["guess"]["person_id"] == person  # the person it was taken from
    assert [s["face"]["face_id"] for s in first["items"]] == [s["face"]["face_id"] for s in everything[:10]]
    second = review.ok("GET", "/faces/singletons", params={"limit": 10, "offset": 10})
    assert [s["face"]["face_id"] for s in second["items"]] == [s["face"]["face_id"] for s in everything[10:20]]

    stranger = next(s for s in everything if s["guess"] is None)["face"]["face_id"]
    review.ok("POST", f"/faces/{stranger}/assign", json={"name": "Nina Newcomer"})
    after = review.ok("GET", "/faces/singletons", params={"limit": 500})
    assert after["total"] == len(alone) - 1 and stranger not in {s["face"]["face_id"] for s in after["items"]}


def test_a_persons_photo_is_served_whole_with_the_box_in_its_pixels(review: Review):
    person, _ = review.named_with_held_back("Pia Photo", held=1)
    face = review.ok("GET", f"/faces/clusters/person_{person}", params={"limit": 1})["faces"]["items"][0]
    response = review.client.get(face["photo_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    photo = PILImage.open(io.BytesIO(response.content))
    assert photo.size == (face["photo_width"], face["photo_height"])  # lfw photos are under the 1280 px cap
    box = face["bbox"]
    assert 0 <= box["x"] < face["photo_width"] and 0 < box["w"] <= face["photo_width"]
    assert review.client.get(f"{API}/photos/999999").status_code == 404
    found = review.ok("GET", "/persons", params={"q": "pia ph"})
    assert [p["name"] for p in found["items"]] == ["Pia Photo"] and found["total"] == 1


def test_undo_restores_the_library_exactly_decision_by_decision(review: Review):
    person, held_back = review.named_with_held_back("Uma Undo")
    other, _ = review.named_with_held_back("Otto Other", held=1)
    review.ok("GET", "/decisions")  # the page's first look
    states = [review.state()]
    faces = review.ok("GET", f"/faces/clusters/person_{person}", params={"limit": 500})["faces"]["items"]
    steps = [
        ("POST", f"/faces/{held_back[0]}/reject", {"person_id": person}),
        ("POST", f"/faces/{held_back[1]}/assign", {"person_id": person}),
        ("POST", f"/persons/{person}/split", {"face_ids": [faces[0]["face_id"]], "name": "Sid Split"}),
        ("POST", f"/faces/{faces[1]['face_id']}/someone-else", {"name": "Sam Else"}),
        ("PATCH", f"/persons/{person}", {"name": "Uma Renamed"}),
        ("POST", f"/faces/{faces[2]['face_id']}/ignore", None),
        ("POST", f"/persons/{other}/merge", {"into": person}),
    ]
    for method, path, body in steps:
        review.ok(method, path, json=body)
        states.append(review.state())
    assert not states[-1][0].equals(states[0][0])
    for expected in reversed(states[:-1]):
        latest = next(d for d in review.ok("GET", "/decisions")["items"] if not d["undone"])
        undone = review.ok("POST", "/decisions/undo", json={"decision_id": latest["decision_id"]})
        assert undone["undone"]["decision_id"] == latest["decision_id"]
        frame, rejections, people = review.state()
        pd.testing.assert_frame_equal(frame, expected[0])
        assert rejections == expected[1] and people == expected[2]
    with review.context.db.session() as session:
        assert not session.scalar(select(Person.id).where(Person.name.in_(["Sid Split", "Sam Else"])))
    assert review.client.post(f"{API}/decisions/undo", json={"decision_id": 1}).status_code == 409  # not the latest


def test_undo_refuses_a_decision_whose_faces_a_clustering_run_changed_since(review: Review):
    cluster = review.take_cluster()
    review.ok("POST", f"/faces/clusters/{cluster['cluster_id']}/label", json={"name": "Rita Run"})
    face = cluster["faces"]["items"][0]["face_id"]
    review.ok("POST", f"/faces/{face}/unassign")
    with review.context.db.session() as session:  # what a run does to a face standing alone: groups it
        session.get(FaceInstance, face).cluster_id = "unknown_cluster_99999"  # type: ignore[union-attr]
    response = review.client.post(f"{API}/decisions/undo")
    assert response.status_code == 409 and "changed since" in response.json()["detail"]


def test_an_ignored_face_stays_out_of_every_list_and_of_the_next_cluster_dual(review: Review):
    person, held_back = review.named_with_held_back("Ivy Ignore", held=2)
    cluster = review.take_cluster()
    in_group = cluster["faces"]["items"][0]["face_id"]
    review.ok("POST", f"/faces/{held_back[0]}/ignore")
    review.ok("POST", f"/faces/{in_group}/ignore")
    ignored = {f["face_id"] for f in review.ok("GET", "/faces/ignored", params={"limit": 500})["items"]}
    assert {held_back[0], in_group} <= ignored
    singles = {s["face"]["face_id"] for s in review.ok("GET", "/faces/singletons", params={"limit": 500})["items"]}
    suggested = {s["face"]["face_id"] for s in review.ok("GET", f"/persons/{person}/suggestions")["items"]}
    assert held_back[0] not in singles | suggested and held_back[1] in suggested

    group_faces(review.context)  # the next cluster-dual: assignment would give held_back[1] to the person
    for face_id in (held_back[0], in_group):
        with review.context.db.session() as session:
            row = session.get(FaceInstance, face_id)
            assert row is not None and row.ignored and row.person_id is None
            assert row.cluster_id == f"unknown_noise_{face_id}"
    with review.context.db.session() as session:
        assert session.get(FaceInstance, held_back[1]).person_id == person  # type: ignore[union-attr]
    clusters = review.ok("GET", "/faces/clusters", params={"limit": 500})["items"]
    assert not {f"unknown_noise_{held_back[0]}", f"unknown_noise_{in_group}"} & {c["cluster_id"] for c in clusters}

    review.ok("POST", f"/faces/{in_group}/unignore")
    group_faces(review.context)
    with review.context.db.session() as session:
        assert not session.get(FaceInstance, in_group).ignored  # type: ignore[union-attr]


def test_suggestions_from_the_servers_memory_are_the_stores_exact_ranking(review: Review):
    person, _ = review.named_with_held_back("Mem Ory")
    memory = FaceVectors()
    from_store = suggest_faces(review.context, person, limit=50, min_score=0.0, exact_below=10**9)
    from_memory = suggest_faces(review.context, person, limit=50, min_score=0.0, cache=memory)
    assert [(s.face.face_id, s.score) for s in from_memory.items] == [
        (s.face.face_id, s.score) for s in from_store.items
    ]
    assert from_memory.total == from_store.total > 0


def test_the_servers_memory_reads_a_face_again_when_its_id_is_reused(review: Review):
    """SQLite may give a deleted face's id to the next face: a face created since the last look is read anew."""
    memory = FaceVectors()
    face = review.take_cluster()["faces"]["items"][0]["face_id"]
    space = suggest_faces(review.context, review.named_with_held_back("Reu Sed")[0], limit=1).space
    assert space is not None
    with memory.lock, review.context.db.session() as session:
        memory.use_space(space)
        memory.refresh(session)
        rows = memory.ensure(review.context, [face])
        old = memory.vectors[rows[0]].copy()
    with review.context.vectors() as store, review.context.db.session() as session:
        store.upsert(space, np.array([face]), -old[None, :], [{"image_id": 0}])  # "the new face's" vector
        row = session.get(FaceInstance, face)
        assert row is not None
        row.created_at = utcnow()
    try:
        with memory.lock, review.context.db.session() as session:
            memory.refresh(session)
            rows = memory.ensure(review.context, [face])
            again = memory.vectors[rows[0]]
        assert np.allclose(again, -old, atol=1e-6)
    finally:
        with review.context.vectors() as store:
            payload = store.fetch_payloads(space)[face]
            store.upsert(space, np.array([face]), old[None, :], [payload])
