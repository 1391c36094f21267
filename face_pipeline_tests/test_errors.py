"""One error family: every error a user can fix derives from face_pipeline.errors.UserFacingError, which the
CLI (cli/common.py `friendly`) and the API (api/errors.py) each map once."""

from __future__ import annotations

import pytest

from face_pipeline.cli.common import UserError
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
    UserError,
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
