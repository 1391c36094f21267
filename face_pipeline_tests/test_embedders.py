"""dlib on real photos (lfw-mini), the InsightFace recognition path with a stand-in model, and explicit model
choices. buffalo_s with its real files, and FACE_EMBEDDER=auto, are in test_insightface.py."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from face_pipeline.domain.assignment import thresholds_for_space
from face_pipeline.settings import load_settings
from face_pipeline.vision.dlib_embedder import DlibEmbedder
from face_pipeline.vision.embedders import create_embedder
from face_pipeline.vision.images import load_rgb
from face_pipeline.vision.insightface_embedder import ArcFaceRecognizer, InsightFaceEmbedder
from face_pipeline.vision.model_packs import InsightFacePack, folder_pack
from face_pipeline.vision.types import ModelUnavailable
from face_pipeline_tests.embedded_photos import LIMITS, EmbeddedPhoto, embed_folder


@pytest.fixture(scope="session")
def lfw_mini_embedded(lfw_mini: Path, dlib_embedder: DlibEmbedder) -> list[EmbeddedPhoto]:
    """Every lfw-mini photo through dlib once (~12 s on this machine)."""
    return embed_folder(lfw_mini, dlib_embedder)


@pytest.fixture(scope="session")
def main_faces(lfw_mini_embedded: list[EmbeddedPhoto]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 128) main-face embeddings and (N,) person names of the photos with a face."""
    found = [p for p in lfw_mini_embedded if p.faces]
    return np.stack([p.main_face.embedding for p in found]), np.array([p.person for p in found])


def _pair_scores(vectors: np.ndarray, people: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of all same-person pairs and all different-person pairs (each pair once)."""
    cosines = vectors @ vectors.T
    upper = np.triu(np.ones(cosines.shape, dtype=bool), k=1)
    same = people[:, None] == people[None, :]
    return cosines[upper & same], cosines[upper & ~same]


# --- dlib on real photos ------------------------------------------------------------------------------


def test_dlib_finds_a_face_in_at_least_95_percent_of_lfw_mini(lfw_mini_embedded: list[EmbeddedPhoto]) -> None:
    assert len(lfw_mini_embedded) == 120
    found = sum(bool(p.faces) for p in lfw_mini_embedded)
    assert found / len(lfw_mini_embedded) >= 0.95, f"faces in {found} of {len(lfw_mini_embedded)} photos"


def test_dlib_faces_are_well_formed(lfw_mini_embedded: list[EmbeddedPhoto], dlib_embedder: DlibEmbedder) -> None:
    faces = [f for p in lfw_mini_embedded for f in p.faces]
    vectors = np.stack([f.embedding for f in faces])
    assert vectors.dtype == np.float32 and vectors.shape[1] == 128 == dlib_embedder.space.dim
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for face in faces:
        x, y, w, h = face.bbox
        assert min(x, y) >= 0 and max(x + w, y + h) <= 250
        assert min(w, h) >= dlib_embedder.min_face_size
        assert len(face.landmarks) == 5 and all(x - 5 <= px <= x + w + 5 for px, _ in face.landmarks)
        assert face.detection_score >= dlib_embedder.min_detection_score
        assert 0.0 < face.quality <= 1.0


def test_same_person_is_clearly_closer_than_different_people(
    main_faces: tuple[np.ndarray, np.ndarray],
) -> None:
    same, different = _pair_scores(*main_faces)
    assert len(same) >= 12 * 27  # 12 people x 8 photos, nearly all found
    assert np.median(same) - np.median(different) > 0.08
    # AUC: the chance that a random same-person pair scores above a random different-person pair.
    auc = (same[:, None] > different[None, :]).mean()
    assert auc > 0.97, f"AUC {auc:.3f}"


def test_default_threshold_rejects_nearly_all_stranger_pairs(
    main_faces: tuple[np.ndarray, np.ndarray], dlib_embedder: DlibEmbedder
) -> None:
    same, different = _pair_scores(*main_faces)
    threshold = thresholds_for_space(dlib_embedder.space.name).threshold
    assert np.quantile(different, 0.99) < threshold < np.quantile(same, 0.9)


def test_face_in_a_large_photo_is_found_with_a_full_size_box(
    lfw_mini_embedded: list[EmbeddedPhoto], dlib_embedder: DlibEmbedder
) -> None:
    """A 3000 x 2000 photo is shrunk to 1600 px for detection; the box must come back in 3000 px pixels."""
    photo = next(p for p in lfw_mini_embedded if p.person == "Andre_Agassi" and p.faces)
    small = load_rgb(photo.path, **LIMITS)
    canvas = np.full((2000, 3000, 3), 120, dtype=np.uint8)
    canvas[1000:1750, 1800:2550] = np.asarray(Image.fromarray(small).resize((750, 750), Image.Resampling.BICUBIC))

    faces = dlib_embedder.detect_and_embed(canvas)
    assert len(faces) == 1
    x, y, w, h = faces[0].bbox
    ox, oy, ow, oh = photo.main_face.bbox
    expected = np.array([1800 + 3 * ox, 1000 + 3 * oy, 3 * ow, 3 * oh])
    assert np.abs(np.array([x, y, w, h]) - expected).max() < 0.15 * 3 * ow, (faces[0].bbox, expected)
    assert float(faces[0].embedding @ photo.main_face.embedding) > 0.93


def test_small_photo_is_upsampled_so_small_faces_are_found(
    lfw_mini_embedded: list[EmbeddedPhoto], dlib_embedder: DlibEmbedder
) -> None:
    photo = next(p for p in lfw_mini_embedded if p.person == "Andre_Agassi" and p.faces)
    tiny = np.asarray(Image.fromarray(load_rgb(photo.path, **LIMITS)).resize((100, 100), Image.Resampling.BICUBIC))
    assert dlib_embedder.upsample_for(tiny.shape, 1.0) == 1  # a 36 px face is under HOG's 80 px window
    assert DlibEmbedder(upsample=0).detect_and_embed(tiny) == []  # a ~44 px face: too small unaided
    faces = dlib_embedder.detect_and_embed(tiny)
    assert len(faces) == 1 and float(faces[0].embedding @ photo.main_face.embedding) > 0.9


def test_upsampling_is_skipped_on_large_detection_images_and_large_minimum_faces() -> None:
    assert DlibEmbedder().upsample_for((1067, 1600, 3), scale=0.4) == 0  # already over 1000 px
    assert DlibEmbedder().upsample_for((600, 800, 3), scale=1.0) == 1
    assert DlibEmbedder(min_face_size=100).upsample_for((600, 800, 3), scale=1.0) == 0


def test_size_and_score_limits_drop_faces(lfw_mini_embedded: list[EmbeddedPhoto]) -> None:
    image = load_rgb(lfw_mini_embedded[0].path, **LIMITS)
    assert DlibEmbedder(min_face_size=200).detect_and_embed(image) == []
    assert DlibEmbedder(min_detection_score=10.0).detect_and_embed(image) == []


def test_blur_lowers_face_quality(lfw_mini_embedded: list[EmbeddedPhoto], dlib_embedder: DlibEmbedder) -> None:
    photo = next(p for p in lfw_mini_embedded if len(p.faces) == 1 and p.faces[0].quality > 0.5)
    blurred = Image.open(photo.path).convert("RGB").filter(ImageFilter.GaussianBlur(2))
    faces = dlib_embedder.detect_and_embed(np.asarray(blurred))
    assert faces and faces[0].quality < photo.faces[0].quality - 0.2


def test_embedder_refuses_arrays_that_are_not_rgb_uint8(dlib_embedder: DlibEmbedder) -> None:
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        dlib_embedder.detect_and_embed(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        dlib_embedder.detect_and_embed(np.zeros((64, 64, 3), dtype=np.float32))


# --- choosing the model -------------------------------------------------------------------------------


def test_dlib_embedder_takes_its_limits_from_the_settings() -> None:
    settings = load_settings(embedder="dlib", detect_max_side=900, min_face_size=50, min_detection_score=0.4)
    embedder = create_embedder(settings)
    assert isinstance(embedder, DlibEmbedder)
    assert (embedder.detect_max_side, embedder.min_face_size, embedder.min_detection_score) == (900, 50, 0.4)


def test_insightface_without_its_files_is_a_clear_error_and_never_downloads(tmp_path: Path) -> None:
    settings = load_settings(embedder="insightface", model_dir=tmp_path)  # FACE_MODEL_NAME: buffalo_l
    folder = tmp_path / "models" / "buffalo_l"
    with pytest.raises(ModelUnavailable, match=f"buffalo_l model files not found: no folder {re.escape(str(folder))}"):
        create_embedder(settings)
    assert not (tmp_path / "models").exists()  # nothing was fetched or created


def test_broken_insightface_files_fail_loudly_or_fall_back_on_auto(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    for name in ("det_10g.onnx", "w600k_r50.onnx"):
        (folder / name).write_bytes(b"an interrupted download")
    detector = re.escape(str(folder / "det_10g.onnx"))
    with pytest.raises(ModelUnavailable, match=f"cannot load detection model {detector}: "):
        create_embedder(load_settings(embedder="insightface", model_dir=tmp_path))
    with caplog.at_level(logging.INFO, logger="face_pipeline.vision.embedders"):
        embedder = create_embedder(load_settings(embedder="auto", model_dir=tmp_path))
    assert isinstance(embedder, InsightFaceEmbedder) and embedder.pack.name == "buffalo_s"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "face_pipeline.vision.embedders"]
    assert line.startswith("face model: buffalo_s from ") and f"cannot load detection model {folder}" in line


# --- InsightFace recognition path with a stand-in model -----------------------------------------------


@pytest.fixture(scope="module")
def tiny_recognizer_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small torch network exported to ONNX in ArcFace's shape (N x 3 x 112 x 112 -> N x 16).

    It stands in for buffalo_l's w600k_r50.onnx, which cannot be downloaded here. InsightFace routes any
    ONNX with a square >= 112 input and one output to ArcFaceONNX, so the real InsightFace code runs:
    model routing, mean/std preprocessing, BGR handling, batching, and norm_crop alignment.
    """
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, kernel_size=8, stride=8), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 16)
    ).eval()
    path = tmp_path_factory.mktemp("tinypack") / "models" / "tinypack" / "tiny_r.onnx"
    path.parent.mkdir(parents=True)
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 112, 112),),
            str(path),
            input_names=["input.1"],
            output_names=["embedding"],
            dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
            dynamo=False,  # the TorchScript exporter needs no onnxscript
        )
    return path


@pytest.fixture(scope="module")
def recognizer(tiny_recognizer_onnx: Path) -> ArcFaceRecognizer:
    return ArcFaceRecognizer.from_onnx(tiny_recognizer_onnx, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def face_crop(lfw_mini: Path) -> np.ndarray:
    """A real face, 112 x 112 RGB, roughly where ArcFace's reference points expect it."""
    photo = Image.open(lfw_mini / "Andre_Agassi" / "Andre_Agassi_0001.jpg").convert("RGB")
    return np.asarray(photo.crop((61, 70, 189, 198)).resize((112, 112), Image.Resampling.BICUBIC))


def _arcface_points() -> np.ndarray:
    from insightface.utils.face_align import arcface_dst

    return np.asarray(arcface_dst, dtype=np.float32)


def test_tiny_onnx_is_routed_to_insightface_recognition(recognizer: ArcFaceRecognizer) -> None:
    assert type(recognizer.model).__name__ == "ArcFaceONNX"
    assert recognizer.dim == 16 and recognizer.input_side == 112 and recognizer.batched
    assert recognizer.providers == ["CPUExecutionProvider"]


def test_recognizer_feeds_the_model_rgb_scaled_to_plus_minus_one(
    recognizer: ArcFaceRecognizer, face_crop: np.ndarray
) -> None:
    """Keypoints already on the reference positions: the crop is the image, the vector is the model's."""
    vectors = recognizer.embed(face_crop, _arcface_points()[None])
    blob = ((face_crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    session = recognizer.model.session
    direct = session.run(None, {session.get_inputs()[0].name: blob})[0]
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    assert vectors.dtype == np.float32 and vectors.shape == (1, 16)
    np.testing.assert_allclose(vectors, direct, atol=1e-5)


def test_alignment_undoes_scale_and_position(recognizer: ArcFaceRecognizer, face_crop: np.ndarray) -> None:
    """The same face twice as large at another place in a bigger photo aligns back to the same crop."""
    canvas = np.full((400, 500, 3), 90, dtype=np.uint8)
    canvas[150:374, 230:454] = np.asarray(Image.fromarray(face_crop).resize((224, 224), Image.Resampling.BICUBIC))
    points = np.stack([_arcface_points(), _arcface_points() * 2 + [230, 150]])
    assert (recognizer.align(face_crop, points[:1])[0] == face_crop).all()  # identity transform
    moved = recognizer.align(canvas, points[1:])[0]
    assert np.abs(moved.astype(int) - face_crop.astype(int)).mean() < 4

    both = recognizer.embed(canvas, np.stack([points[1], points[1]]))  # one batched run
    assert both.shape == (2, 16)
    np.testing.assert_allclose(both[0], both[1], atol=1e-6)
    assert float(both[0] @ recognizer.embed(face_crop, points[:1])[0]) > 0.99
    assert recognizer.embed(canvas, np.empty((0, 5, 2))).shape == (0, 16)


def test_insightface_embedder_needs_a_detector_model(tiny_recognizer_onnx: Path) -> None:
    """A pack folder with a recognizer only is refused by name; a recognizer given as the detector too."""
    folder = tiny_recognizer_onnx.parent
    with pytest.raises(ModelUnavailable, match=f"tinypack: need a detector .* in {re.escape(str(folder))}"):
        folder_pack(folder.parents[1], "tinypack")
    pack = InsightFacePack("tinypack", detector=tiny_recognizer_onnx, recognizer=tiny_recognizer_onnx, source="test")
    with pytest.raises(ModelUnavailable, match="is not a face detection model"):
        InsightFaceEmbedder(pack, device="cpu").load()
