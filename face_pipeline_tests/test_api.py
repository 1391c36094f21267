"""The labelling API over real state: lfw-mini ingested with the real default model (buffalo_s), then clustered.

Every module-scoped library is built once per database back end (SQLite, PostgreSQL); tests that write
take a cluster or face of their own, so they do not depend on each other's order.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from face_pipeline.api.app import create_app
from face_pipeline.services.cluster_dual import run_cluster_dual
from face_pipeline.services.library import Library
from face_pipeline.services.thumbnail_store import thumbnail_path
from face_pipeline.settings import load_settings
from face_pipeline.storage.models import FaceAssignmentEvent, FaceInstance, FaceRejection, Image
from face_pipeline_eval.main_face import main_face_paths
from face_pipeline_tests.conftest import throwaway_database
from face_pipeline_tests.test_ingest import ingest, make_context

with warnings.catch_warnings():  # starlette asks for httpx2; the test client works the same with httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BASE_URL = "http://127.0.0.1"  # the host check admits loopback names only (TestClient's default is testserver)
API = "/api/v1"
SPACE = "insightface_buffalo_s"


# --- building the library ------------------------------------------------------------------------------


def _ingested_template(tmp_path_factory: pytest.TempPathFactory, lfw_mini: Path) -> Path:
    """lfw-mini ingested into SQLite once per test session; callers copy the folder (~23 s saved each)."""
    template = tmp_path_factory.getbasetemp() / "api_lfw_mini_template"
    if not (template / "data" / "face_pipeline.db").is_file():
        shutil.rmtree(template, ignore_errors=True)
        context = make_context(template, lfw_mini, workers=2)
        ingest(context)
        context.close()
    return template / "data"


def sqlite_library(tmp_path_factory: pytest.TempPathFactory, lfw_mini: Path, **overrides: Any) -> Library:
    root = tmp_path_factory.mktemp("api_library")
    shutil.copytree(_ingested_template(tmp_path_factory, lfw_mini), root / "data")
    settings = load_settings(photos_dir=lfw_mini, data_dir=root / "data", embedder="buffalo_s", **overrides)
    return Library.from_settings(settings)


def group_faces(context: Library) -> None:
    """The cluster-dual sequence, as the cluster_dual job runs it."""
    with context.vectors() as vectors:
        run_cluster_dual(context, vectors)


def face_folders(context: Library) -> dict[int, str]:
    """face id -> identity (photo folder) for each photo's main face (LFW's labelled one)."""
    return {face_id: path.parent.name for face_id, path in main_face_paths(context.db).items()}


def make_client(context: Library, *, warm_up: bool = True, **overrides: Any) -> TestClient:
    settings = load_settings(**{**context.settings.model_dump(), **overrides}) if overrides else context.settings
    return TestClient(create_app(settings, warm_up=warm_up), base_url=BASE_URL)


@pytest.fixture(scope="module")
def postgres_module_url(postgres_server: str) -> Iterator[str]:
    """A throwaway PostgreSQL database for one module."""
    with throwaway_database(postgres_server, "fp_api") as url:
        yield url


@dataclass
class ServedLibrary:
    context: Library
    client: TestClient
    folders: dict[int, str]

    def events(self, action: str, face_id: int | None = None) -> int:
        query = select(func.count()).where(FaceAssignmentEvent.action == action)
        if face_id is not None:
            query = query.where(FaceAssignmentEvent.face_id == face_id)
        with self.context.db.session() as session:
            return session.scalar(query) or 0

    def face(self, face_id: int) -> FaceInstance:
        with self.context.db.session() as session:
            face = session.get(FaceInstance, face_id)
            assert face is not None
            return face

    def take_unknown_cluster(self, min_size: int = 3) -> dict[str, Any]:
        """The largest unknown cluster no test has touched yet (tests mark theirs by naming them)."""
        clusters = self.client.get(f"{API}/faces/clusters", params={"type": "unknown", "limit": 500}).json()
        for cluster in clusters["items"]:
            if cluster["size"] >= min_size and cluster["cluster_id"] not in _taken:
                _taken.add(cluster["cluster_id"])
                return self.client.get(f"{API}/faces/clusters/{cluster['cluster_id']}", params={"limit": 500}).json()
        pytest.fail(f"no untouched unknown cluster of {min_size}+ faces left: {clusters}")


_taken: set[str] = set()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], ids=["sqlite", "pg"]
)
def library(
    request: pytest.FixtureRequest, lfw_mini: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedLibrary]:
    if request.param == "sqlite":
        context = sqlite_library(tmp_path_factory, lfw_mini)
    else:
        url = request.getfixturevalue("postgres_module_url")
        context = make_context(tmp_path_factory.mktemp("api_pg"), lfw_mini, url, workers=2)
        ingest(context)
    group_faces(context)
    _taken.clear()
    with make_client(context) as client:
        yield ServedLibrary(context, client, face_folders(context))
    context.close()


# --- reading -------------------------------------------------------------------------------------------


def test_health_and_the_documented_endpoints(library: ServedLibrary):
    assert library.client.get("/healthz").json() == {"status": "ok", "database": "ok"}
    paths = library.client.get("/openapi.json").json()["paths"]
    expected = {
        f"{API}/faces/clusters/{{cluster_id}}/label": {"post"},
        f"{API}/faces/clusters": {"get"},
        f"{API}/faces/clusters/{{cluster_id}}": {"get"},
        f"{API}/faces/{{face_id}}/thumbnail": {"get"},
        f"{API}/faces/{{face_id}}/assign": {"post"},
        f"{API}/faces/{{face_id}}/reject": {"post"},
        f"{API}/faces/{{face_id}}/unassign": {"post"},
        f"{API}/persons": {"get", "post"},
        f"{API}/persons/{{person_id}}": {"get", "patch"},
        f"{API}/persons/{{person_id}}/merge": {"post"},
        f"{API}/persons/{{person_id}}/suggestions": {"get"},
        f"{API}/faces/stats": {"get"},
        "/healthz": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path


def test_unknown_clusters_come_largest_first_with_their_best_face_as_cover(library: ServedLibrary):
    page = library.client.get(f"{API}/faces/clusters", params={"type": "unknown", "limit": 500}).json()
    sizes = [c["size"] for c in page["items"]]
    assert page["total"] == len(page["items"]) >= 5
    assert sizes == sorted(sizes, reverse=True) and sizes[0] >= 5
    for cluster in page["items"][:3]:
        assert cluster["type"] == "unknown" and cluster["cluster_id"].startswith("unknown_cluster_")
        detail = library.client.get(f"{API}/faces/clusters/{cluster['cluster_id']}", params={"limit": 500}).json()
        faces = detail["faces"]["items"]
        assert detail["faces"]["total"] == cluster["size"] == len(faces)
        assert cluster["cover_face_id"] == max(faces, key=lambda f: (f["quality"], -f["face_id"]))["face_id"]
        assert cluster["cover_thumbnail_url"] == f"{API}/faces/{cluster['cover_face_id']}/thumbnail"

    second = library.client.get(f"{API}/faces/clusters", params={"type": "unknown", "limit": 2, "offset": 2}).json()
    assert [c["cluster_id"] for c in second["items"]] == [c["cluster_id"] for c in page["items"][2:4]]
    noise = library.client.get(f"{API}/faces/clusters", params={"type": "noise", "limit": 10}).json()
    assert noise["total"] > 0 and all(c["size"] == 1 and c["type"] == "noise" for c in noise["items"])
    everything = library.client.get(f"{API}/faces/clusters", params={"limit": 1}).json()
    with library.context.db.session() as session:
        assert everything["total"] == session.scalar(select(func.count(func.distinct(FaceInstance.cluster_id))))


def test_cluster_faces_are_paged_and_carry_no_file_paths(library: ServedLibrary):
    cluster = library.client.get(f"{API}/faces/clusters", params={"type": "unknown", "limit": 1}).json()["items"][0]
    url = f"{API}/faces/clusters/{cluster['cluster_id']}"
    first = library.client.get(url, params={"limit": 2}).json()
    rest = library.client.get(url, params={"limit": 500, "offset": 2}).json()
    ids = [f["face_id"] for f in first["faces"]["items"] + rest["faces"]["items"]]
    assert len(ids) == len(set(ids)) == cluster["size"] == first["faces"]["total"]
    face = first["faces"]["items"][0]
    assert set(face["bbox"]) == {"x", "y", "w", "h"} and face["image_id"] > 0
    body = library.client.get(url, params={"limit": 500}).text + library.client.get(f"{API}/faces/stats").text
    assert str(library.context.settings.photos_dir) not in body and str(library.context.settings.data_dir) not in body
    assert library.client.get(f"{API}/faces/clusters/unknown_cluster_999999").status_code == 404


def test_thumbnails_are_cached_jpegs_for_known_faces_only(library: ServedLibrary):
    face_id = min(library.folders)
    response = library.client.get(f"{API}/faces/{face_id}/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content[:2] == b"\xff\xd8" and "max-age" in response.headers["cache-control"]

    # A lost thumbnail file is rebuilt from the photo and cached again.
    path = thumbnail_path(library.context.settings.thumbnails_dir, face_id)
    path.unlink()
    rebuilt = library.client.get(f"{API}/faces/{face_id}/thumbnail")
    assert rebuilt.status_code == 200 and rebuilt.content[:2] == b"\xff\xd8" and path.is_file()

    assert library.client.get(f"{API}/faces/987654/thumbnail").status_code == 404
    for bad in ("abc", "0", "-3", str(2**63), str(2**80), "..%2F..%2Fetc%2Fpasswd", "1.5"):
        assert library.client.get(f"{API}/faces/{bad}/thumbnail").status_code in (404, 422), bad


def test_a_thumbnail_whose_photo_is_gone_is_a_404_not_a_500(library: ServedLibrary):
    face_id = max(library.folders)
    with library.context.db.session() as session:
        image_id = session.get(FaceInstance, face_id).image_id  # type: ignore[union-attr]
        old = session.get(Image, image_id).path  # type: ignore[union-attr]
        session.execute(update(Image).where(Image.id == image_id).values(path="/nowhere/gone.jpg"))
    path = thumbnail_path(library.context.settings.thumbnails_dir, face_id)
    saved = path.read_bytes()
    path.unlink()
    try:
        response = library.client.get(f"{API}/faces/{face_id}/thumbnail")
        assert response.status_code == 404 and "no thumbnail" in response.json()["detail"]
    finally:
        path.write_bytes(saved)
        with library.context.db.session() as session:
            session.execute(update(Image).where(Image.id == image_id).values(path=old))


def test_stats_match_the_library(library: ServedLibrary):
    stats = library.client.get(f"{API}/faces/stats").json()
    assert stats["photos_by_status"] == {"done": 120}
    assert stats["faces"] >= 120 and stats["active_space"] == SPACE and stats["skipped"] == []


# --- labelling -----------------------------------------------------------------------------------------


def test_the_seeds_curl_line_names_a_cluster(library: ServedLibrary):
    cluster = library.take_unknown_cluster()
    cluster_id, size = cluster["cluster_id"], cluster["size"]
    before = library.events("label_cluster")
    # The seed: curl -X POST .../clusters/unknown_cluster_5/label -H "Content-Type: application/json" -d '{...}'
    response = library.client.post(
        f"{API}/faces/clusters/{cluster_id}/label",
        content=b'{"name": "Alice Johnson"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["person_name"] == "Alice Johnson" and result["created_person"] is True
    assert result["faces_labelled"] == size and result["skipped_confirmed"] == []
    assert library.events("label_cluster") - before == size

    assert library.client.get(f"{API}/faces/clusters/{cluster_id}").status_code == 404
    person_cluster = library.client.get(f"{API}/faces/clusters/person_{result['person_id']}").json()
    assert person_cluster["type"] == "person" and person_cluster["person_name"] == "Alice Johnson"
    assert person_cluster["size"] == size
    assert all(f["user_confirmed"] for f in person_cluster["faces"]["items"])
    people = library.client.get(f"{API}/persons").json()["items"]
    assert {"name": "Alice Johnson", "face_count": size, "confirmed_count": size}.items() <= next(
        p for p in people if p["person_id"] == result["person_id"]
    ).items()

    # The same name again (any case) reuses the person.
    again = library.take_unknown_cluster()
    reused = library.client.post(f"{API}/faces/clusters/{again['cluster_id']}/label", json={"name": " alice johnson "})
    assert reused.json()["person_id"] == result["person_id"] and reused.json()["created_person"] is False


def test_a_stale_page_gets_409_and_changes_nothing(library: ServedLibrary):
    cluster = library.take_unknown_cluster(min_size=4)
    shown = [f["face_id"] for f in cluster["faces"]["items"]]
    before = (library.events("label_cluster"), library.client.get(f"{API}/persons").json()["total"])
    url = f"{API}/faces/clusters/{cluster['cluster_id']}/label"

    stale = library.client.post(url, json={"name": "Stale Page", "face_ids": shown[:-1]})
    assert stale.status_code == 409 and "changed" in stale.json()["detail"]
    assert (library.events("label_cluster"), library.client.get(f"{API}/persons").json()["total"]) == before

    fresh = library.client.post(url, json={"name": "Fresh Page", "face_ids": list(reversed(shown))})
    assert fresh.status_code == 200 and fresh.json()["faces_labelled"] == len(shown)


def test_single_faces_are_assigned_rejected_released_and_taken_out_of_groups(library: ServedLibrary):
    cluster = library.take_unknown_cluster(min_size=4)
    a, b, c, d = (f["face_id"] for f in cluster["faces"]["items"][:4])
    post = library.client.post

    named = post(f"{API}/faces/{a}/assign", json={"name": "Single Face"})
    assert named.status_code == 200 and named.json()["created_person"] is True
    person_id = named.json()["person_id"]
    assert post(f"{API}/faces/{b}/assign", json={"person_id": f"person_{person_id}"}).status_code == 200
    assert library.face(b).person_id == person_id and library.face(b).user_confirmed
    assert library.events("label_face", a) == library.events("label_face", b) == 1

    rejected = post(f"{API}/faces/{b}/reject")
    assert rejected.status_code == 200 and rejected.json()["person_id"] is None
    assert rejected.json()["cluster_id"] == f"unknown_noise_{b}"
    with library.context.db.session() as session:
        assert session.get(FaceRejection, (b, person_id)) is not None
    assert library.events("reject", b) == 1
    assert post(f"{API}/faces/{b}/reject").status_code == 422  # nobody's face now: say which person
    assert post(f"{API}/faces/{b}/reject", json={"person_id": person_id}).status_code == 200

    released = post(f"{API}/faces/{a}/unassign")
    assert released.status_code == 200 and released.json()["person_id"] is None
    assert library.events("unassign", a) == 1
    assert post(f"{API}/faces/{a}/unassign").status_code == 422

    alone = post(f"{API}/faces/{c}/remove-from-cluster")
    assert alone.status_code == 200 and alone.json()["cluster_id"] == f"unknown_noise_{c}"
    assert library.events("remove_from_cluster", c) == 1
    assert post(f"{API}/faces/{c}/remove-from-cluster").status_code == 409
    detail = library.client.get(f"{API}/faces/clusters/{cluster['cluster_id']}", params={"limit": 500}).json()
    assert d in [f["face_id"] for f in detail["faces"]["items"]] and detail["size"] == cluster["size"] - 3


def test_assign_takes_exactly_one_of_person_id_or_name(library: ServedLibrary):
    face_id = sorted(library.folders)[3]
    url = f"{API}/faces/{face_id}/assign"
    assert library.client.post(url, json={}).status_code == 422
    assert library.client.post(url, json={"name": "X", "person_id": "a" * 32}).status_code == 422
    assert library.client.post(url, json={"person_id": "b" * 32}).status_code == 404
    assert library.client.post(f"{API}/faces/987654/assign", json={"name": "Nobody"}).status_code == 404


def test_people_are_created_renamed_and_merged(library: ServedLibrary):
    client = library.client
    created = client.post(f"{API}/persons", json={"name": "Carol Merge"})
    assert created.status_code == 201
    carol = created.json()["person_id"]
    assert client.post(f"{API}/persons", json={"name": "carol merge"}).status_code == 200
    assert library.events("create_person") >= 1

    renamed = client.patch(f"{API}/persons/{carol}", json={"name": "  Carol Smith  "})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Carol Smith"
    assert library.events("rename") >= 1

    cluster = library.take_unknown_cluster()
    dave = client.post(f"{API}/faces/clusters/{cluster['cluster_id']}/label", json={"name": "Dave Merge"}).json()
    merged = client.post(f"{API}/persons/{dave['person_id']}/merge", json={"into": f"person_{carol}"})
    assert merged.status_code == 200, merged.text
    assert merged.json()["faces_moved"] == cluster["size"]
    assert merged.json()["person"]["face_count"] == cluster["size"]
    assert library.events("merge_person") >= 1 and library.events("merge") >= cluster["size"]
    # The merged-away id leads to the survivor; the list shows the survivor only.
    assert client.get(f"{API}/persons/{dave['person_id']}").json()["person_id"] == carol
    names = [p["name"] for p in client.get(f"{API}/persons", params={"limit": 500}).json()["items"]]
    assert "Carol Smith" in names and "Dave Merge" not in names

    assert client.post(f"{API}/persons/{carol}/merge", json={"into": carol}).status_code == 422
    assert client.post(f"{API}/persons/{'c' * 32}/merge", json={"into": carol}).status_code == 404
    assert client.patch(f"{API}/persons/{'c' * 32}", json={"name": "Ghost"}).status_code == 404


def test_an_ambiguous_name_is_a_409(library: ServedLibrary):
    client = library.client
    first = client.post(f"{API}/persons", json={"name": "Twin One"}).json()["person_id"]
    second = client.post(f"{API}/persons", json={"name": "Twin Two"}).json()["person_id"]
    client.patch(f"{API}/persons/{second}", json={"name": "Twin One"})  # two people may share a name...
    source = client.post(f"{API}/persons", json={"name": "Twin Source"}).json()["person_id"]
    response = client.post(f"{API}/persons/{source}/merge", json={"into": "Twin One"})  # ...but not a reference
    assert response.status_code == 409 and first in response.json()["detail"]
    assert client.post(f"{API}/persons/{source}/merge", json={"into": first}).status_code == 200


# --- suggestions ---------------------------------------------------------------------------------------


def test_suggestions_rank_the_persons_own_unnamed_faces_first(library: ServedLibrary):
    from face_pipeline.services.browse import suggest_faces

    cluster = library.take_unknown_cluster(min_size=5)
    faces = [f["face_id"] for f in cluster["faces"]["items"]]
    folder = Counter(library.folders.get(f) for f in faces).most_common(1)[0][0]
    held_back = [f for f in faces if library.folders.get(f) == folder][-2:]
    for face_id in held_back:  # the reviewer took two faces out before naming the group
        assert library.client.post(f"{API}/faces/{face_id}/remove-from-cluster").status_code == 200
    person = library.client.post(
        f"{API}/faces/clusters/{cluster['cluster_id']}/label", json={"name": "Erin Suggest"}
    ).json()["person_id"]

    response = library.client.get(f"{API}/persons/{person}/suggestions", params={"limit": 5})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    ranked = [s["face"]["face_id"] for s in items]
    # This person's faces nobody named (the two held back, and any the clustering left alone) come first.
    with library.context.db.session() as session:
        unnamed = set(session.scalars(select(FaceInstance.id).where(FaceInstance.person_id.is_(None))))
    same = {f for f, name in library.folders.items() if name == folder and f in unnamed}
    assert set(held_back) <= same and len(same) <= 5
    assert set(ranked[: len(same)]) == same, (ranked, same)
    assert [s["score"] for s in items] == sorted((s["score"] for s in items), reverse=True)
    assert all(s["face"]["person_id"] is None for s in items)

    # The vector store's filtered search (used for big libraries) ranks the same faces first.
    searched = suggest_faces(library.context, person, limit=5, exact_below=0)
    assert {s.face.face_id for s in searched.items[: len(same)]} == same

    # "Not this person" is remembered: the face is never suggested for them again.
    assert library.client.post(f"{API}/faces/{held_back[0]}/reject", json={"person_id": person}).status_code == 200
    again = library.client.get(f"{API}/persons/{person}/suggestions", params={"limit": 50}).json()
    assert held_back[0] not in [s["face"]["face_id"] for s in again["items"]]
    assert library.client.get(f"{API}/persons/{'d' * 32}/suggestions").status_code == 404


def test_suggestions_answer_503_while_a_pipeline_run_holds_the_vector_store(library: ServedLibrary):
    if library.context.settings.qdrant_url:
        pytest.skip("only the embedded vector store is single-process")
    person = library.client.post(f"{API}/persons", json={"name": "Frank Busy"}).json()["person_id"]
    library.client.post(f"{API}/faces/{sorted(library.folders)[0]}/assign", json={"person_id": person})
    suggestions = f"{API}/persons/{person}/suggestions"
    before = library.client.get(suggestions).json()  # this server now holds every vector it needs in memory
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from face_pipeline.storage.vectors import open_vector_store; "
            f"s = open_vector_store(None, __import__('pathlib').Path({str(library.context.settings.vectors_dir)!r})); "
            f"s.count({SPACE!r}); print('holding', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        # A server started now (its warm-up off) has no vectors in memory and must read them: 503.
        with make_client(library.context, warm_up=False) as cold:
            busy = cold.get(suggestions)
            assert busy.status_code == 503 and "pipeline run holds the vector store" in busy.json()["detail"]
            # Browsing and labelling need SQL only: they go on while the run works.
            assert cold.get(f"{API}/faces/clusters").status_code == 200
            assert cold.patch(f"{API}/persons/{person}", json={"name": "Frank Still"}).status_code == 200
        # The running server answers from the vectors it holds, the same as before the run took the store.
        during = library.client.get(suggestions)
        assert during.status_code == 200 and during.json()["items"] == before["items"]
    finally:
        holder.communicate("", timeout=30)
    assert library.client.get(suggestions).status_code == 200


# --- security and client mistakes ----------------------------------------------------------------------


def test_writes_need_the_token_when_one_is_set(library: ServedLibrary):
    with make_client(library.context, api_token="s3cret-token") as client:
        url = f"{API}/persons"
        assert client.get(url).status_code == 200  # reads stay open
        assert client.post(url, json={"name": "Token Test"}).status_code == 401
        wrong = client.post(url, json={"name": "Token Test"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = client.post(url, json={"name": "Token Test"}, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 201
        person = ok.json()["person_id"]
        assert client.patch(f"{API}/persons/{person}", json={"name": "T"}).status_code == 401
        assert client.post(f"{API}/faces/1/unassign").status_code == 401


def test_browser_writes_from_other_sites_and_foreign_host_names_are_refused(library: ServedLibrary):
    client = library.client
    evil = client.post(f"{API}/persons", json={"name": "CSRF"}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    form = client.post(
        f"{API}/faces/1/unassign",
        content=b"x=1",
        headers={"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 403
    same = client.post(f"{API}/persons", json={"name": "Same Origin"}, headers={"Origin": BASE_URL})
    assert same.status_code == 201
    assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    # CORS is off unless configured.
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options(f"{API}/persons", headers=preflight).headers
    with make_client(library.context, api_cors_origins=["http://app.example"]) as allowed:
        answer = allowed.options(f"{API}/persons", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "http://app.example"
        cross = {"Origin": "http://app.example"}
        assert allowed.post(f"{API}/persons", json={"name": "Cors Ok"}, headers=cross).status_code == 201


BAD_REQUESTS = [
    ("post", "/faces/clusters/unknown_cluster_1/label", {}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", {"name": ""}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", {"name": "   "}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", {"name": "x" * 201}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", {"name": "Bad\x00Name"}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", {"name": "Bad\u202eName"}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", {"name": 42}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", {"name": ["a"]}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", {"name": "A", "nmae": "typo"}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", {"name": "A", "face_ids": [2**70]}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", {"name": "A", "face_ids": "1,2"}, 422),
    ("post", "/faces/clusters/unknown_cluster_1/label", [1, 2], 422),
    ("post", "/faces/clusters/unknown_cluster_x/label", {"name": "A"}, 422),
    ("post", "/faces/clusters/%2E%2E%2Fetc/label", {"name": "A"}, (404, 422)),
    ("post", f"/faces/clusters/unknown_cluster_{'9' * 30}/label", {"name": "A"}, 422),
    ("get", "/faces/clusters?type=bogus", None, 422),
    ("get", "/faces/clusters?limit=0", None, 422),
    ("get", "/faces/clusters?limit=100000", None, 422),
    ("get", f"/faces/clusters?offset={2**64}", None, 422),
    ("get", "/faces/clusters/person_zz", None, 422),
    ("get", f"/faces/{2**63 + 5}/thumbnail", None, 422),
    ("post", f"/faces/{2**63}/assign", {"name": "A"}, 422),
    ("post", "/faces/abc/reject", None, 422),
    ("post", "/faces/1/reject", {"person_id": "\x00"}, 422),
    ("post", "/faces/1/reject", {"person_id": 7}, 422),
    ("post", "/persons", {"name": None}, 422),
    ("post", "/persons", {"name": "x" * 10_000}, 422),
    ("patch", f"/persons/{'a' * 32}", {"name": "\n"}, 422),
    ("patch", "/persons/not-an-id", {"name": "A"}, 422),
    ("post", f"/persons/{'a' * 32}/merge", {"into": ""}, 422),
    ("post", f"/persons/{'a' * 32}/merge", {"into": "x\x00"}, 422),
    ("get", f"/persons/{'a' * 32}/suggestions?limit=-1", None, 422),
    ("get", "/persons/%00/suggestions", None, 422),
    ("delete", "/persons", None, 405),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD_REQUESTS)
def test_client_mistakes_get_a_4xx_never_a_500(
    library: ServedLibrary, method: str, path: str, body: Any, status: int | tuple[int, ...]
):
    kwargs = {} if body is None else {"json": body}
    response = library.client.request(method, API + path, **kwargs)
    assert response.status_code in (status if isinstance(status, tuple) else (status,)), response.text


def test_malformed_and_oversized_bodies_are_refused(library: ServedLibrary):
    url = f"{API}/persons"
    headers = {"Content-Type": "application/json"}
    assert library.client.post(url, content=b'{"name": ', headers=headers).status_code == 422
    assert library.client.post(url, content=b"\xff\xfe", headers=headers).status_code in (400, 422)
    assert library.client.post(url, content=b"name=A", headers={"Content-Type": "text/plain"}).status_code == 422
    huge = b'{"name": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    assert library.client.post(url, content=huge, headers=headers).status_code == 413


# --- the serve command ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_command_answers_on_localhost(tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "FACE_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "face_pipeline.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"serve did not answer: {server.communicate()[0]}")
                time.sleep(0.3)
        assert health.json()["status"] == "ok"
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert "Review faces" in page.text and "default-src 'self'" in page.headers["content-security-policy"]
        assert httpx.get(f"http://127.0.0.1:{port}/static/review.js").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
