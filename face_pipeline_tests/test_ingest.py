"""Ingest end to end on real photos with the real default model (InsightFace buffalo_s): catalog, detection,
SQL rows, vectors; and a dlib library, which keeps dlib when FACE_EMBEDDER=auto would pick buffalo_s."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select, update

from face_pipeline.defs.jobs import INGEST, WRITES_VECTORS
from face_pipeline.defs.runner import CLI_TAGS, resolve_job
from face_pipeline.services.catalog import scan_photos
from face_pipeline.services.detection import detect_pending_faces
from face_pipeline.services.labels import label_face, reject_face
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import EmbeddingSpaceMismatch
from face_pipeline.services.thumbnail_store import thumbnail_path
from face_pipeline.settings import load_settings
from face_pipeline.storage.models import FaceAssignmentEvent, FaceInstance, FaceRejection, Image, ImageStatus
from face_pipeline_eval.main_face import main_face_paths
from face_pipeline_tests.photo_corpus import copy_people, write_bad_inputs, write_odd_but_valid


def ingest(context: Library, **kwargs: object):  # type: ignore[no-untyped-def]
    scan = scan_photos(context.db, context.settings.photos_dir)
    with context.vectors() as vectors:
        return scan, detect_pending_faces(context.settings, context.db, vectors, **kwargs)  # type: ignore[arg-type]


SPACE = "insightface_buffalo_s"  # what FACE_EMBEDDER=auto picks without buffalo_l's files
DLIB_SPACE = "dlib_resnet_v1"


def make_context(
    tmp_path: Path,
    photos: Path,
    database_url: str | None = None,
    *,
    embedder: str = "buffalo_s",
    **overrides: object,
) -> Library:
    """A library under `tmp_path`; the default model, named explicitly so that a buffalo_l unpacked in
    ~/.insightface on a developer's machine does not change what the tests measure."""
    settings = load_settings(
        photos_dir=photos, data_dir=tmp_path / "data", database_url=database_url, embedder=embedder, **overrides
    )
    return Library.from_settings(settings)


@pytest.fixture(scope="module")
def mini_library(lfw_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    """lfw-mini ingested once (2 worker processes), shared by the read-only tests below."""
    context = make_context(tmp_path_factory.mktemp("mini"), lfw_mini, workers=2)
    ingest(context)
    yield context
    context.close()


def _identity_of_faces(context: Library, main_faces_only: bool = False) -> dict[int, str]:
    """face id -> the photo's folder name; with main_faces_only, only each photo's main face (LFW's
    labelled face: others in the background are other people)."""
    if main_faces_only:
        return {face_id: path.parent.name for face_id, path in main_face_paths(context.db).items()}
    with context.db.session() as session:
        rows = session.execute(select(FaceInstance.id, Image.path).join(Image, Image.id == FaceInstance.image_id))
        return {face_id: Path(path).parent.name for face_id, path in rows}


def test_a_face_is_found_in_at_least_119_of_120_lfw_mini_photos(mini_library: Library):
    with mini_library.db.session() as session:
        photos = session.scalar(select(func.count()).select_from(Image))
        with_faces = session.scalar(select(func.count()).where(Image.face_count > 0))
        done = session.scalar(select(func.count()).where(Image.status == ImageStatus.DONE))
    assert photos == 120 and done == 120
    assert with_faces >= 119  # buffalo_s: 120 measured (dlib: 95%+)


def test_every_face_has_a_vector_and_a_thumbnail(mini_library: Library):
    identities = _identity_of_faces(mini_library)
    with mini_library.vectors() as vectors:
        ids, matrix = vectors.fetch_all(SPACE)
    assert sorted(identities) == ids.tolist()
    assert matrix.dtype == np.float32 and matrix.shape == (len(ids), 512)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)
    for face_id in ids.tolist():
        assert thumbnail_path(mini_library.settings.thumbnails_dir, face_id).stat().st_size > 500


def test_faces_of_one_person_are_closer_than_faces_of_different_people(mini_library: Library):
    identities = _identity_of_faces(mini_library, main_faces_only=True)
    with mini_library.vectors() as vectors:
        ids = np.array(sorted(identities), dtype=np.int64)
        matrix = vectors.fetch(SPACE, ids)
    names = np.array([identities[i] for i in ids.tolist()])
    cosine = matrix @ matrix.T
    same = names[:, None] == names[None, :]
    upper = np.triu(np.ones_like(same), k=1).astype(bool)
    same_scores, different_scores = cosine[same & upper], cosine[~same & upper]
    # ArcFace's scale: the same person ~0.6, different people ~0.0 (measured medians 0.58 and 0.008).
    assert np.median(same_scores) - np.median(different_scores) > 0.4
    # Ranking: a random same-person pair outscores a random different-person pair almost always.
    auc = (same_scores[:, None] > different_scores[None, :]).mean()
    assert auc > 0.999  # measured 0.99997


def test_second_backfill_is_a_no_op(mini_library: Library):
    with mini_library.db.session() as session:
        before = session.execute(select(FaceInstance.id, FaceInstance.updated_at)).all()
    scan, detected = ingest(mini_library)
    assert (scan.new, scan.changed, detected.photos, detected.faces) == (0, 0, 0, 0)
    with mini_library.db.session() as session:
        assert session.execute(select(FaceInstance.id, FaceInstance.updated_at)).all() == before


def test_bad_files_are_skipped_with_reasons_and_the_run_goes_on(tmp_path: Path, lfw_mini: Path):
    photos = tmp_path / "photos"
    good = copy_people(lfw_mini, photos / "good", people=1, photos_each=3)
    expected = write_bad_inputs(photos / "bad", good[0])
    valid = write_odd_but_valid(photos / "odd", good[1])
    context = make_context(tmp_path, photos)

    scan, detected = ingest(context)
    assert detected.photos == scan.new == len(good) + len(expected) + len(valid)
    with context.db.session() as session:
        rows = {Path(r.path).name: r for r in session.scalars(select(Image))}
    for name, reason in expected.items():
        assert rows[name].status == ImageStatus.SKIPPED, name
        assert rows[name].skip_reason and any(w in rows[name].skip_reason.lower() for w in reason.split("|")), (
            name,
            rows[name].skip_reason,
        )
    for name in valid + [p.name for p in good]:
        assert rows[name].status == ImageStatus.DONE, (name, rows[name].skip_reason)
        assert rows[name].face_count >= 1, f"no face found in {name}"
    assert (rows["rotated.JPG"].width, rows["rotated.JPG"].height) == (250, 250)
    context.close()


def test_changed_photo_gets_new_faces_and_old_vectors_go(tmp_path: Path, lfw_mini: Path, database_url: str):
    photos = tmp_path / "photos"
    copied = copy_people(lfw_mini, photos, people=2, photos_each=2)
    context = make_context(tmp_path, photos, database_url)
    ingest(context)
    with context.db.session() as session:
        old_ids = set(session.scalars(select(FaceInstance.id)))
    shutil.copy(copied[-1], copied[0])  # same name, other content

    scan, detected = ingest(context)
    assert (scan.changed, detected.photos, detected.replaced_faces) == (1, 1, 1)
    with context.db.session() as session:
        new_ids = set(session.scalars(select(FaceInstance.id)))
    with context.vectors() as vectors:
        stored, _ = vectors.fetch_all(SPACE)
    assert len(new_ids - old_ids) == 1 and len(old_ids - new_ids) == 1
    assert set(stored.tolist()) == new_ids
    context.close()


def test_limit_processes_at_most_that_many_photos(tmp_path: Path, lfw_mini: Path):
    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos, people=2, photos_each=4)
    context = make_context(tmp_path, photos)
    _, first = ingest(context, limit=3)
    _, second = ingest(context)
    assert (first.photos, second.photos) == (3, 5)
    context.close()


def test_a_dlib_library_stays_on_dlib_under_auto_and_another_model_is_refused_by_name(
    tmp_path: Path, lfw_mini: Path, caplog: pytest.LogCaptureFixture
):
    """dlib is the licence-free choice: a library built with it keeps it when FACE_EMBEDDER=auto (which picks
    buffalo_s for a new library); naming another model is refused with the command that moves the library."""
    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos / "first", people=2, photos_each=2)
    context = make_context(tmp_path, photos, embedder="dlib")
    _, first = ingest(context)
    context.close()
    assert (first.space, first.photos) == (DLIB_SPACE, 4) and first.faces >= 4

    for person in ("Ana_Palacio", "Andre_Agassi", "Andy_Roddick"):  # other people: no duplicate of a first photo
        (photos / "later" / person).mkdir(parents=True)
        for photo in sorted((lfw_mini / person).glob("*.jpg"))[:3]:
            shutil.copy(photo, photos / "later" / person / photo.name)
    no_buffalo_l = tmp_path / "insightface"  # so auto's own pick would be buffalo_s
    context = make_context(tmp_path, photos, embedder="auto", model_dir=no_buffalo_l)
    with caplog.at_level("INFO", logger="face_pipeline.services.space_registry"):
        _, later = ingest(context)
    assert (later.space, later.photos) == (DLIB_SPACE, 9) and later.faces >= 9
    assert "FACE_EMBEDDER=auto keeps dlib" in caplog.text and "faces reembed --model buffalo_s" in caplog.text
    with context.db.session() as session:
        spaces = session.execute(select(FaceInstance.embedding_space, func.count()).group_by("embedding_space")).all()
    with context.vectors() as vectors:
        _, stored = vectors.fetch_all(DLIB_SPACE)
    assert [tuple(row) for row in spaces] == [(DLIB_SPACE, first.faces + later.faces)]
    assert stored.shape == (first.faces + later.faces, 128)
    context.close()

    shutil.copy(lfw_mini / "Adrien_Brody" / "Adrien_Brody_0008.jpg", photos / "new.jpg")
    context = make_context(tmp_path, photos, embedder="buffalo_s")
    with pytest.raises(
        EmbeddingSpaceMismatch, match=r"embedded with 'dlib_resnet_v1'.*`faces reembed --model buffalo_s`"
    ):
        ingest(context)
    with context.db.session() as session:
        assert session.scalar(select(Image.status).where(Image.path.like("%new.jpg"))) == ImageStatus.PENDING
        assert session.scalar(select(func.count()).where(FaceInstance.embedding_space != DLIB_SPACE)) == 0
    context.close()


def _main_face(context: Library, photo: Path) -> FaceInstance:
    """The photo's largest face (LFW's labelled one)."""
    with context.db.session() as session:
        faces = session.scalars(
            select(FaceInstance).join(Image, Image.id == FaceInstance.image_id).where(Image.path == str(photo))
        ).all()
    return max(faces, key=lambda f: f.bbox_w * f.bbox_h)


def _add_jpeg_comment(photo: Path, text: bytes) -> None:
    """Insert a COM segment after the JPEG's SOI marker: the file's bytes change, its coded pixels do not
    (what a photo manager writing a caption or rating does; re-saving with Pillow would re-encode them)."""
    data = photo.read_bytes()
    assert data[:2] == b"\xff\xd8"
    photo.write_bytes(data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:])


def test_a_metadata_only_edit_keeps_faces_and_names_without_detecting_again(tmp_path: Path, lfw_mini: Path):
    photos = tmp_path / "photos"
    copied = copy_people(lfw_mini, photos, people=2, photos_each=2)
    context = make_context(tmp_path, photos)
    ingest(context)
    named = _main_face(context, copied[0])
    label_face(context, named.id, "Ann")
    with context.db.session() as session:
        faces_before = session.execute(select(FaceInstance.id, FaceInstance.person_id).order_by("id")).all()

    _add_jpeg_comment(copied[0], b"rating=5; keywords=holiday")
    with PILImage.open(copied[0]) as im:
        assert im.info.get("comment") == b"rating=5; keywords=holiday"  # a real comment, read back by Pillow
    scan, detected = ingest(context)

    assert (scan.metadata_only, scan.changed, detected.photos, detected.replaced_faces) == (1, 0, 0, 0)
    with context.db.session() as session:
        assert session.execute(select(FaceInstance.id, FaceInstance.person_id).order_by("id")).all() == faces_before
        face = session.get(FaceInstance, named.id)
        row = session.scalar(select(Image).where(Image.path == str(copied[0])))
    assert face is not None and face.user_confirmed and face.person_id is not None
    assert row.status == ImageStatus.DONE and row.content_hash == hashlib.sha256(copied[0].read_bytes()).hexdigest()
    context.close()


def test_a_photo_from_before_pixel_hashes_is_detected_once_then_has_one(tmp_path: Path, lfw_mini: Path):
    photos = tmp_path / "photos"
    copied = copy_people(lfw_mini, photos, people=1, photos_each=2)
    context = make_context(tmp_path, photos)
    ingest(context)
    named = _main_face(context, copied[0])
    ann = label_face(context, named.id, "Ann").person_id
    with context.db.session() as session:  # as a catalog written before migration 0003 left it
        session.execute(update(Image).values(pixel_hash=None))

    _add_jpeg_comment(copied[0], b"first edit")
    scan, detected = ingest(context)
    assert (scan.metadata_only, scan.changed, detected.photos, detected.carried_decisions) == (0, 1, 1, 1)
    again = _main_face(context, copied[0])
    assert again.id != named.id and (again.person_id, again.user_confirmed) == (ann, True)  # moved to the new face

    _add_jpeg_comment(copied[0], b"second edit")
    scan, detected = ingest(context)
    assert (scan.metadata_only, scan.changed, detected.photos) == (1, 0, 0)
    assert _main_face(context, copied[0]).id == again.id
    context.close()


def test_a_changed_photo_keeps_names_and_rejections_on_the_face_at_the_same_place(
    tmp_path: Path, lfw_mini: Path, database_url: str
):
    photos = tmp_path / "photos"
    copied = copy_people(lfw_mini, photos, people=2, photos_each=2)
    context = make_context(tmp_path, photos, database_url)
    ingest(context)
    named, refused = _main_face(context, copied[0]), _main_face(context, copied[2])
    ann = label_face(context, named.id, "Ann").person_id
    reject_face(context, refused.id, "Ann")

    with PILImage.open(copied[0]) as im:  # 3 pixels cropped off the left and top border
        im.crop((3, 3, im.width, im.height)).save(copied[0], quality=95)
    with PILImage.open(copied[2]) as im:  # a corner block painted over
        pixels = np.asarray(im).copy()
        pixels[:24, :24] = 255
        PILImage.fromarray(pixels).save(copied[2], quality=95)
    scan, detected = ingest(context)

    assert (scan.changed, scan.metadata_only, detected.photos) == (2, 0, 2)
    assert detected.carried_decisions >= 2
    now_named, now_refused = _main_face(context, copied[0]), _main_face(context, copied[2])
    assert now_named.id != named.id and now_refused.id != refused.id
    assert (now_named.person_id, now_named.user_confirmed, now_named.assignment_source) == (ann, True, "user")
    with context.db.session() as session:
        assert session.get(FaceInstance, named.id) is None
        assert session.scalars(
            select(FaceRejection.person_id).where(FaceRejection.face_id == now_refused.id)
        ).all() == [ann]
        carried = session.execute(
            select(FaceAssignmentEvent.face_id, FaceAssignmentEvent.details).where(
                FaceAssignmentEvent.action == "decision_carried"
            )
        ).all()
    assert {face_id: details["from_face_id"] for face_id, details in carried} == {
        now_named.id: named.id,
        now_refused.id: refused.id,
    }
    with context.vectors() as vectors:  # the payload says whose face it is, as SQL does
        vector = vectors.fetch(SPACE, np.array([now_named.id]))[0]
        hits = vectors.search(SPACE, vector, limit=5, filter_payload={"person_id": ann})
    assert [hit.face_id for hit in hits] == [now_named.id]
    context.close()


@pytest.mark.parametrize("executor", ["in_process", "multiprocess"])
def test_backfill_runs_the_very_ingest_job_the_definitions_hold(executor: str, monkeypatch: pytest.MonkeyPatch):
    """`faces backfill` builds the ingest job from its own two assets (in process) instead of importing every
    asset module: same snapshot, tags and executor as the job the UI loads."""
    from face_pipeline.definitions import defs

    monkeypatch.setenv("FACE_EXECUTOR", executor)
    full = defs().resolve_job_def(INGEST)
    job = resolve_job(load_settings(), INGEST)
    assert job.get_job_snapshot_id() == full.get_job_snapshot_id()
    assert job.run_tags == full.run_tags == WRITES_VECTORS
    assert job.executor_def.name == full.executor_def.name == executor


# Modules a backfill with nothing to detect must not import: the face models' runtimes, torch, scikit-learn.
HEAVY_MODULES = ("onnxruntime", "insightface", "dlib", "torch", "sklearn", "cv2")
_BACKFILL_PROBE = f"""
import runpy, sys
sys.argv = ["face-pipeline", "faces", "backfill"]
try:
    runpy.run_module("face_pipeline.cli", run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("imported:", sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY_MODULES!r})))
"""


def test_a_backfill_with_nothing_to_do_records_the_named_run_and_loads_no_face_model(tmp_path: Path, lfw_mini: Path):
    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos, people=2, photos_each=1)
    env = {
        **os.environ,
        "FACE_PHOTOS_DIR": str(photos),
        "FACE_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "FACE_EMBEDDER": "buffalo_s",
    }
    backfill = [sys.executable, "-m", "face_pipeline.cli", "faces", "backfill"]
    first = subprocess.run(backfill, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and "2 files, 2 new" in first.stdout, first.stdout + first.stderr

    again = subprocess.run(
        [sys.executable, "-c", _BACKFILL_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 files, 0 new, 0 changed" in again.stdout and "detected: 0 faces in 0 photos" in again.stdout
    assert "imported: []" in again.stdout

    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        runs = instance.get_runs()
        detected = instance.get_latest_materialization_event(dg.AssetKey("detected_faces"))
        catalog = instance.get_latest_materialization_event(dg.AssetKey("photo_catalog"))
    assert [run.job_name for run in runs] == [INGEST, INGEST]
    assert all(run.is_success and run.tags.items() >= {**CLI_TAGS, **WRITES_VECTORS}.items() for run in runs)
    assert detected is not None and catalog is not None and detected.run_id == catalog.run_id == runs[0].run_id
    assert detected.asset_materialization is not None and catalog.asset_materialization is not None
    assert detected.asset_materialization.metadata["message"].value == "no pending photos"
    assert catalog.asset_materialization.metadata["unchanged"].value == 2
