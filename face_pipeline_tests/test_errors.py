"""One error family: every error a user can fix derives from face_pipeline.errors.UserFacingError, which the
CLI (cli/common.py `friendly`) and the API (api/errors.py) each map once."""

from __future__ import annotations

import pytest

from face_pipeline.defs.runner import RunFailed
from face_pipeline.errors import Conflict, InvalidInput, NotFound, UserFacingError
from face_pipeline.services.catalog import PhotosDirNotFound
from face_pipeline.services.reembed import SameModel
from face_pipeline.services.space_registry import EmbeddingSpaceMismatch
from face_pipeline.services.training import TooFewLabels
from face_pipeline.settings import SettingsError
from face_pipeline.storage.vectors import VectorStoreError, VectorStoreLocked
from face_pipeline.vision.types import ModelUnavailable

USER_FIXABLE = [
    NotFound,
    InvalidInput,
    Conflict,
    SettingsError,
    RunFailed,
    PhotosDirNotFound,
    EmbeddingSpaceMismatch,
    VectorStoreError,
    VectorStoreLocked,
    ModelUnavailable,
    SameModel,
    TooFewLabels,
]


@pytest.mark.parametrize("cls", USER_FIXABLE, ids=lambda cls: cls.__name__)
def test_every_user_fixable_error_derives_from_the_one_base(cls: type[Exception]):
    assert issubclass(cls, UserFacingError)


def test_errors_keep_the_base_classes_code_catches_them_by():
    assert issubclass(PhotosDirNotFound, FileNotFoundError)
    assert issubclass(SettingsError, ValueError)
    assert issubclass(RunFailed, RuntimeError)
    assert issubclass(VectorStoreError, RuntimeError)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("face", 7), 404),
        (Conflict("cluster changed"), 409),
        (VectorStoreLocked("/srv/vectors is locked"), 503),
        (VectorStoreError("/srv/vectors/x is broken"), 503),
        (InvalidInput("name is empty"), 422),
        (SettingsError("FACE_DEVICE='tpu'"), 422),
        (ModelUnavailable("no buffalo_l"), 422),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_the_api_maps_the_one_base_by_subclass(error: UserFacingError, status: int):
    import warnings

    from fastapi import FastAPI

    from face_pipeline.api.errors import install_error_handlers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fail")
    def fail() -> None:
        raise error

    response = TestClient(app).get("/fail")
    assert response.status_code == status
    if status == 503:
        assert "/srv" not in response.text  # server paths stay in the log
        assert ("Retry-After" in response.headers) == isinstance(error, VectorStoreLocked)
    if status == 422:
        assert response.json()["detail"][0]["msg"] == str(error)
