"""`faces reembed`: a dlib library moved to InsightFace buffalo_s on real lfw-mini photos, with real models.

A library is ingested with dlib, clustered and labelled once per module (names, a "not this person") and
copied for each test. The small-library tests (CLI, PostgreSQL, crash after the commit) build their own.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

import face_pipeline.services.reembed as reembed_module
from face_pipeline.cli import app
from face_pipeline.domain.face_matching import match_faces
from face_pipeline.errors import InvalidInput
from face_pipeline.services.integrity import cluster_id_problems
from face_pipeline.services.labels import label_cluster, label_face, reject_face
from face_pipeline.services.library import Library
from face_pipeline.services.reembed import SameModel, moves, reembed_library, stage_library, staging
from face_pipeline.services.space_registry import active_space
from face_pipeline.services.thumbnail_store import thumbnail_path
from face_pipeline.storage.models import (
    EmbeddingSpaceRow,
    FaceAssignmentEvent,
    FaceInstance,
    FaceRejection,
    Image,
    ImageStatus,
    ReembedRun,
    ReembedStagedFace,
    ReembedStagedImage,
    ReembedStatus,
    SpaceStatus,
)
from face_pipeline_tests.photo_corpus import copy_mini_library, copy_people
from face_pipeline_tests.test_dual_mode import cluster_dual, faces
from face_pipeline_tests.test_ingest import ingest, make_context

DLIB, BUFFALO_S = "dlib_resnet_v1", "insightface_buffalo_s"


# --- state helpers ---------------------------------------------------------------------------------------


def labels(context: Library) -> dict[int, str]:
    """face id -> person id, for the faces a user named."""
    with context.db.session() as session:
        rows = session.execute(select(FaceInstance.id, FaceInstance.person_id).where(FaceInstance.user_confirmed))
        return {r.id: r.person_id for r in rows}


def rejections(context: Library) -> set[tuple[int, str]]:
    with context.db.session() as session:
        return set(session.execute(select(FaceRejection.face_id, FaceRejection.person_id)).tuples())


def photo_of(context: Library, face_id: int) -> Path:
    with context.db.session() as session:
        return Path(
            session.scalar(
                select(Image.path)
                .join(FaceInstance, FaceInstance.image_id == Image.id)
                .where(FaceInstance.id == face_id)
            )
        )


def assert_library_is_in(context: Library, space: str, dim: int) -> None:
    """Every face and vector in `space`, thumbnails for all, no staging left behind."""
    with context.db.session() as session:
        assert active_space(session).name == space
        face_ids = session.scalars(select(FaceInstance.id).order_by(FaceInstance.id)).all()
        assert set(session.scalars(select(FaceInstance.embedding_space)).all()) == {space}
        done = session.scalars(select(Image.embedding_space).where(Image.status == ImageStatus.DONE)).all()
        assert set(done) == {space}
        assert session.scalar(select(func.count()).select_from(ReembedStagedFace)) == 0
        assert session.scalar(select(func.count()).select_from(ReembedStagedImage)) == 0
    with context.vectors() as vectors:
        ids, matrix = vectors.fetch_all(space)
        assert not any(vectors.has_collection(f"reembed_staging_{i}") for i in range(1, 5))
    assert ids.tolist() == face_ids and matrix.shape == (len(face_ids), dim)
    for face_id in face_ids:
        assert thumbnail_path(context.settings.thumbnails_dir, face_id).is_file(), face_id
    assert cluster_id_problems(context.db).passed


def move(context: Library, model: str = "buffalo_s", **kwargs: object) -> reembed_module.ReembedReport:
    with context.vectors() as vectors:
        return reembed_library(context, vectors, model, **kwargs)  # type: ignore[arg-type]


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled_data(lfw_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lfw-mini's 12 people (6 photos each) and its strangers, ingested with dlib, clustered, and labelled:
    every group named after its majority, a few strangers named one by one, one face ruled out."""
    root = tmp_path_factory.mktemp("reembed")
    copy_mini_library(lfw_mini, root / "photos")
    context = make_context(root, root / "photos", embedder="dlib", workers=2)
    ingest(context)
    cluster_dual(context)
    state = faces(context)
    groups: dict[str, list[str]] = {}
    for f in state.values():
        if str(f["cluster"]).startswith("unknown_cluster_") and f["who"]:
            groups.setdefault(str(f["cluster"]), []).append(str(f["who"]))
    for cluster, who in groups.items():
        label_cluster(context, cluster, max(set(who), key=who.count))
    strangers = sorted(i for i, f in state.items() if f["who"] and str(f["cluster"]).startswith("unknown_noise_"))
    for face_id in strangers[:5]:
        label_face(context, face_id, str(state[face_id]["who"]))
    named = sorted(labels(context))
    reject_face(context, named[0])  # "not this person": the face leaves the person for good
    label_face(context, strangers[5], "Somebody")
    reject_face(context, strangers[6], "Somebody")  # ruled out on a face nobody named
    context.close()
    return root


@pytest.fixture
def library(labelled_data: Path, tmp_path: Path) -> Iterator[Library]:
    shutil.copytree(labelled_data, tmp_path / "lib")
    context = make_context(
        tmp_path / "lib", tmp_path / "lib" / "photos", embedder="dlib", workers=2, detect_batch_size=16
    )
    with context.db.session() as session:  # the copy's photos live under the copy
        session.execute(update(Image).values(path=func.replace(Image.path, str(labelled_data), str(tmp_path / "lib"))))
    yield context
    context.close()


def small_library(root: Path, lfw_mini: Path, database_url: str | None = None) -> Library:
    """Two people, four photos each, ingested with dlib in this process; two faces named, one ruled out."""
    copy_people(lfw_mini, root / "photos", people=2, photos_each=4)
    context = make_context(root, root / "photos", database_url, embedder="dlib", workers=1)
    ingest(context)
    label_face(context, 1, "First")
    label_face(context, 2, "First")
    reject_face(context, 3, "First")
    return context


# --- the move ---------------------------------------------------------------------------------------------


def test_moving_to_buffalo_s_keeps_names_and_rejections_on_the_same_face_ids(library: Library):
    before, ruled_out = labels(library), rejections(library)
    assert len(before) >= 50 and len(ruled_out) == 2
    gone_photo = photo_of(library, sorted(before)[1])  # a named face's photo disappears before the move
    gone_photo.unlink()

    report = move(library)

    assert report.switched and (report.source_space, report.target_space) == (DLIB, BUFFALO_S)
    assert_library_is_in(library, BUFFALO_S, 512)
    after = labels(library)
    present = {f: p for f, p in before.items() if f != sorted(before)[1]}
    kept = sum(after.get(face_id) == person for face_id, person in present.items())
    assert kept >= 0.99 * len(present), f"{kept} of {len(present)} names kept"
    assert rejections(library) == ruled_out  # both faces were found again
    lost = {d.face_id: d for d in report.not_carried}
    assert set(before) - set(after) == set(lost)  # every name not carried is listed...
    assert lost[sorted(before)[1]].photo == str(gone_photo)
    assert "does not exist" in lost[sorted(before)[1]].reason and lost[sorted(before)[1]].person_name
    with open(str(report.csv_path), newline="") as handle:  # ...in the CSV too
        assert [int(r["face_id"]) for r in csv.DictReader(handle)] == [d.face_id for d in report.not_carried]
    assert report.decisions_carried == len(after) + 2  # + the two faces ruled out (nobody's now)
    assert report.matched + report.added == report.faces_new and report.matched + report.removed == report.faces_old
    with library.db.session() as session:
        spaces = dict(session.execute(select(EmbeddingSpaceRow.name, EmbeddingSpaceRow.status)).tuples().all())
        removed_events = session.scalar(select(func.count()).where(FaceAssignmentEvent.action == "face_removed"))
        gone_image = session.scalar(select(Image).where(Image.path == str(gone_photo)))
    assert spaces == {DLIB: SpaceStatus.RETIRED, BUFFALO_S: SpaceStatus.ACTIVE}
    assert removed_events == report.removed
    assert gone_image.status == ImageStatus.PENDING and gone_image.embedding_space is None

    cluster_dual(library)  # the next clustering runs in the new space and keeps every name
    assert all(labels(library).get(f) == p for f, p in after.items())
    state = faces(library)
    assert sum(str(f["cluster"]).startswith("unknown_cluster_") for f in state.values()) >= 2


def test_an_interrupted_move_resumes_while_the_old_space_serves(
    library: Library, lfw_mini: Path, monkeypatch: pytest.MonkeyPatch
):
    first = move(library, limit=20)
    assert not first.switched and first.photos_staged == 20 and first.photos_remaining == first.photos_total - 20

    stage_batch, calls = staging._stage_batch, []

    def crash_on_second_batch(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a run
        stage_batch(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(staging, "_stage_batch", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        move(library)
    monkeypatch.undo()
    with library.db.session() as session:
        assert session.scalar(select(func.count()).select_from(ReembedStagedImage)) == 20 + 16
        assert active_space(session).name == DLIB

    # Meanwhile the old space serves: new photos come in, clustering runs, a user names a face.
    person = sorted((library.settings.photos_dir / "people").iterdir())[0]
    arrivals = sorted((lfw_mini / person.name).glob("*.jpg"))[6:]
    for photo in arrivals:
        shutil.copy(photo, person / photo.name)
    _, detected = ingest(library)
    assert detected.photos == len(arrivals) and detected.space == DLIB
    cluster_dual(library)
    unnamed = min(i for i, f in faces(library).items() if f["who"] and not f["confirmed"])
    label_face(library, unnamed, "Named Meanwhile")
    before = labels(library)

    report = move(library)

    assert report.switched and report.photos_staged == report.photos_total - 36
    assert_library_is_in(library, BUFFALO_S, 512)
    after = labels(library)
    assert after[unnamed] == before[unnamed]
    assert sum(after.get(f) == p for f, p in before.items()) >= 0.99 * len(before)
    with library.db.session() as session:
        runs = session.execute(select(ReembedRun.id, ReembedRun.status)).all()
    assert [r.status for r in runs] == [ReembedStatus.FINISHED]  # one run, resumed twice


def test_moving_into_the_space_the_library_is_in_is_refused_and_changes_nothing(library: Library):
    with pytest.raises(SameModel, match="already in dlib_resnet_v1"):
        move(library, "dlib")
    with pytest.raises(InvalidInput, match="--model must be one of buffalo_s, buffalo_l, dlib, insightface"):
        move(library, "auto")
    with library.db.session() as session:
        assert session.scalar(select(func.count()).select_from(ReembedRun)) == 0
        assert active_space(session).name == DLIB


def test_a_crash_after_the_switch_is_finished_by_the_next_run(
    tmp_path: Path, lfw_mini: Path, monkeypatch: pytest.MonkeyPatch
):
    context = small_library(tmp_path, lfw_mini)
    named = labels(context)

    def crash(*args: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(moves, "finish_run", crash)  # the clean-up after the commit
    with pytest.raises(RuntimeError, match="power cut"):
        move(context)
    monkeypatch.undo()
    with context.db.session() as session:
        assert active_space(session).name == BUFFALO_S  # the switch committed
        assert session.scalar(select(ReembedRun.status)) == ReembedStatus.SWITCHED

    with context.vectors() as vectors:  # the staging step (first in the CLI's run) leaves it to the switch step
        assert "committed earlier" in stage_library(context, vectors, "buffalo_s").message
    report = move(context)  # the same command again finishes it instead of refusing

    assert report.switched and report.message.startswith("finished the switch")
    assert_library_is_in(context, BUFFALO_S, 512)
    assert labels(context) == named
    with pytest.raises(SameModel):
        move(context)
    context.close()


def test_a_small_library_with_a_trained_space_active_moves_on_each_database(
    tmp_path: Path, lfw_mini: Path, database_url: str
):
    context = small_library(tmp_path, lfw_mini, database_url)
    named, ruled_out = labels(context), rejections(context)
    with context.db.session() as session:  # as after `faces reassign --use-trained-model`
        session.execute(update(EmbeddingSpaceRow).values(status=SpaceStatus.RETIRED))
        session.add(
            EmbeddingSpaceRow(
                name="dlib_resnet_v1_proj_1",
                kind="projection",
                model_name="head",
                dim=128,
                base_space=DLIB,
                status=SpaceStatus.ACTIVE,
            )
        )

    report = move(context)

    assert report.switched and report.faces_old >= 8 and report.matched >= 8
    assert labels(context) == named and rejections(context) == ruled_out
    assert_library_is_in(context, BUFFALO_S, 512)
    with context.db.session() as session:
        statuses = dict(session.execute(select(EmbeddingSpaceRow.name, EmbeddingSpaceRow.status)).tuples().all())
    assert statuses == {
        DLIB: SpaceStatus.RETIRED,
        "dlib_resnet_v1_proj_1": SpaceStatus.RETIRED,
        BUFFALO_S: SpaceStatus.ACTIVE,
    }
    cluster_dual(context)
    context.close()


# --- the CLI ----------------------------------------------------------------------------------------------


def test_cli_moves_the_library_through_dagster_and_lists_what_it_could_not_carry(
    tmp_path: Path, lfw_mini: Path, monkeypatch: pytest.MonkeyPatch
):
    context = small_library(tmp_path, lfw_mini)
    photo_of(context, 1).unlink()
    with context.db.session() as session:
        face_count = session.scalar(select(func.count()).select_from(FaceInstance))
    context.close()
    monkeypatch.setenv("FACE_PHOTOS_DIR", str(tmp_path / "photos"))
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    runner = CliRunner()

    result = runner.invoke(app, ["faces", "reembed", "--model", "buffalo_s"])

    assert result.exit_code == 0, result.output
    assert f"faces: {face_count} before" in result.output
    assert "user decisions: 2 carried over, 1 not carried:" in result.output
    assert "face 1 (First) in " in result.output and "does not exist" in result.output
    assert f"active space: {BUFFALO_S}; next: faces cluster-dual" in result.output
    for args, message in (
        (["--model", "buffalo_s"], f"error: the library is already in {BUFFALO_S}"),
        (["--model", "resnet"], "error: --model must be one of buffalo_s, buffalo_l, dlib, insightface"),
    ):
        refused = runner.invoke(app, ["faces", "reembed", *args])
        assert refused.exit_code == 2 and refused.output.strip().count("\n") == 0, refused.output
        assert refused.output.startswith(message), refused.output


# --- matching (pure) --------------------------------------------------------------------------------------


def test_matching_takes_the_best_total_overlap_per_photo_and_ignores_weak_overlaps():
    old_images = np.array([1, 1, 2, 3])
    old_boxes = np.array([[0, 0, 10, 10], [6, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    new_images = np.array([1, 1, 2, 4])
    # new 0 overlaps old 1 best, but giving it to old 0 lets old 1 take new 1: the larger total
    new_boxes = np.array([[4, 0, 10, 10], [9, 0, 10, 10], [8, 8, 10, 10], [0, 0, 10, 10]])
    old_rows, new_rows = match_faces(old_images, old_boxes, new_images, new_boxes, min_iou=0.3)
    assert list(zip(old_rows.tolist(), new_rows.tolist(), strict=True)) == [(0, 0), (1, 1)]
