"""Defects a code review found, each pinned by a test on real state: a few lfw-mini photos ingested with the
real default model (buffalo_s) once per module, copied for each test, grouped by dual-mode clustering."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from face_pipeline.api.app import MAX_BODY_BYTES, create_app
from face_pipeline.cli import app as cli_app
from face_pipeline.domain.naming import noise_cluster_id
from face_pipeline.services.import_labels import import_labels
from face_pipeline.services.labels import (
    label_cluster,
    label_face,
    reject_face,
    unassign_face,
)
from face_pipeline.services.library import Library
from face_pipeline.settings import load_settings
from face_pipeline.storage.db import Database
from face_pipeline.storage.models import FaceInstance, FaceRejection, Person
from face_pipeline.storage.models import Image as ImageRow
from face_pipeline.storage.vectors import VectorStoreLocked
from face_pipeline_tests.photo_corpus import copy_people, write_bad_inputs
from face_pipeline_tests.test_dual_mode import cluster_dual
from face_pipeline_tests.test_ingest import SPACE, ingest, make_context

with warnings.catch_warnings():  # starlette asks for httpx2; the test client works the same with httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def small_data(lfw_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """3 people x 3 photos and one broken file, ingested and grouped once; returns the folder and the
    ingest's skip reasons."""
    root = tmp_path_factory.mktemp("review")
    photos = root / "photos"
    copy_people(lfw_mini, photos, people=3, photos_each=3)
    real = next(photos.rglob("*.jpg"))
    write_bad_inputs(photos / "broken", real)
    context = make_context(root, photos, workers=1)
    _, report = ingest(context)
    cluster_dual(context)
    context.close()
    return root, dict(report.skip_reasons)


@pytest.fixture
def library(small_data: tuple[Path, dict[str, str]], tmp_path: Path) -> Iterator[Library]:
    data, _ = small_data
    shutil.copytree(data, tmp_path / "lib")
    context = make_context(tmp_path / "lib", tmp_path / "lib" / "photos")
    with context.db.session() as session:  # the copy's photos live under the copy
        session.execute(update(ImageRow).values(path=func.replace(ImageRow.path, str(data), str(tmp_path / "lib"))))
    yield context
    context.close()


def main_faces(context: Library) -> dict[int, tuple[str, str]]:
    """face id -> (photo path, cluster id) for photos with exactly one face."""
    with context.db.session() as session:
        rows = session.execute(
            select(FaceInstance.id, FaceInstance.cluster_id, ImageRow.path, ImageRow.face_count).join(
                ImageRow, ImageRow.id == FaceInstance.image_id
            )
        ).all()
    return {r.id: (r.path, r.cluster_id) for r in rows if r.face_count == 1}


def person_of(context: Library, face_id: int) -> tuple[str | None, bool]:
    with context.db.session() as session:
        face = session.get(FaceInstance, face_id)
        assert face is not None
        return face.person_id, face.user_confirmed


def rejected(context: Library, face_id: int, person_id: str) -> bool:
    with context.db.session() as session:
        return session.get(FaceRejection, (face_id, person_id)) is not None


def person_id_of(context: Library, name: str) -> str:
    with context.db.session() as session:
        person_id = session.scalar(select(Person.id).where(Person.name == name))
        assert person_id is not None
        return person_id


# --- 1. one rule for "name this face" --------------------------------------------------------------------


def _alice_and_a_face_ruled_out(context: Library) -> tuple[str, int, dict[int, tuple[str, str]]]:
    faces = main_faces(context)
    first, second = sorted(faces)[:2]
    alice = label_face(context, first, "Alice").person_id
    reject_face(context, second, "Alice")
    return alice, second, faces


def test_naming_one_face_lifts_its_rejection(library: Library):
    alice, ruled_out, _ = _alice_and_a_face_ruled_out(library)
    label_face(library, ruled_out, "Alice")
    assert person_of(library, ruled_out) == (alice, True)
    assert not rejected(library, ruled_out, alice)


def test_naming_a_cluster_skips_faces_ruled_out_for_that_person(library: Library):
    alice, ruled_out, faces = _alice_and_a_face_ruled_out(library)
    cluster = faces[ruled_out][1]
    result = label_cluster(library, cluster, "Alice")
    assert result.skipped_rejected == [ruled_out]
    assert person_of(library, ruled_out) == (None, False)
    assert rejected(library, ruled_out, alice)


def test_import_skips_faces_ruled_out_for_that_person(library: Library, tmp_path: Path):
    alice, ruled_out, faces = _alice_and_a_face_ruled_out(library)
    tree = tmp_path / "tree"
    (tree / "Alice").mkdir(parents=True)
    shutil.copy(faces[ruled_out][0], tree / "Alice" / "ruled_out.jpg")
    report = import_labels(library, tree)
    assert report.people == 1 and report.faces_labelled == 0 and report.rejected == 1
    assert person_of(library, ruled_out) == (None, False)
    assert rejected(library, ruled_out, alice)


# --- 2. the body limit counts a streamed body ------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_refused_and_changes_nothing(tmp_path: Path):
    settings = load_settings(photos_dir=tmp_path, data_dir=tmp_path / "data")
    chunk = b"a" * 65536

    def body() -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
        yield b'{"name": "'
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            yield chunk
        yield b'"}'

    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        response = client.post("/api/v1/persons", content=body(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413, response.text[:200]
        json_type = {"Content-Type": "application/json"}
        small = client.post("/api/v1/persons", content=iter([b'{"name": "Bo"}']), headers=json_type)
        assert small.status_code in (200, 201), small.text[:200]
        assert client.get("/api/v1/persons").json()["total"] == 1


# --- 3. user edits reach the vector store's payloads -----------------------------------------------------


def _unnamed_hits(context: Library, face_id: int) -> dict[int, object]:
    with context.vectors() as store:
        query = store.fetch(SPACE, np.array([face_id], dtype=np.int64))[0]
        hits = store.search(SPACE, query, 100, filter_payload={"person_id": None})
    return {h.face_id: h.payload.get("cluster_id") for h in hits}


def test_user_edits_update_the_vector_payloads(library: Library):
    face = sorted(main_faces(library))[0]
    assert face in _unnamed_hits(library, face)
    alice = label_face(library, face, "Alice").person_id
    assert face not in _unnamed_hits(library, face)  # named: the filtered search no longer offers it
    unassign_face(library, face)
    assert _unnamed_hits(library, face).get(face) == noise_cluster_id(face)  # without re-running clustering
    label_face(library, face, "Alice")
    reject_face(library, face, alice)
    assert face in _unnamed_hits(library, face)


def test_a_locked_vector_store_does_not_fail_the_edit(library: Library, monkeypatch: pytest.MonkeyPatch):
    face = sorted(main_faces(library))[0]

    def locked(*_: object, **__: object) -> None:
        raise VectorStoreLocked("a pipeline run holds the vector store")

    from face_pipeline.storage.vector_backends import EdgeVectorStore

    monkeypatch.setattr(EdgeVectorStore, "set_payload", locked)
    label_face(library, face, "Alice")
    assert person_of(library, face)[1] is True


# --- 4. CLI commands close what they open ----------------------------------------------------------------


def test_cli_commands_close_their_database(library: Library, monkeypatch: pytest.MonkeyPatch):
    opened: list[Database] = []
    disposed: list[Database] = []
    real_init, real_dispose = Database.__init__, Database.dispose

    def init(self: Database, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        opened.append(self)

    def dispose(self: Database) -> None:
        disposed.append(self)
        real_dispose(self)

    monkeypatch.setattr(Database, "__init__", init)
    monkeypatch.setattr(Database, "dispose", dispose)
    monkeypatch.setenv("FACE_PHOTOS_DIR", str(library.settings.photos_dir))
    monkeypatch.setenv("FACE_DATA_DIR", str(library.settings.data_dir))
    monkeypatch.setenv("FACE_EMBEDDER", "buffalo_s")
    face = sorted(main_faces(library))[0]
    runner = CliRunner()
    for args in (["label-face", str(face), "Alice"], ["unassign", str(face)], ["label-face", "999999", "Bo"]):
        result = runner.invoke(cli_app, ["faces", *args])
        assert result.exit_code in (0, 2), result.output
    assert len(opened) == 3 and set(map(id, disposed)) == set(map(id, opened))


# --- 5. skip reasons are keyed by the photo's path -------------------------------------------------------


def test_skip_reasons_name_the_photo(small_data: tuple[Path, dict[str, str]]):
    root, reasons = small_data
    assert reasons and all(Path(path).is_relative_to(root / "photos" / "broken") for path in reasons)
    assert any(Path(path).name == "empty.jpg" and "empty" in reason for path, reason in reasons.items())
