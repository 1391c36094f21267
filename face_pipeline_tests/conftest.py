"""Shared fixtures: real photo folders, throwaway SQLite/PostgreSQL databases, pipeline settings."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get("FACE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_configure(config: pytest.Config) -> None:
    # insightface's norm_crop calls scikit-image's deprecated SimilarityTransform.estimate on every face.
    config.addinivalue_line("filterwarnings", "ignore:`estimate` is deprecated:FutureWarning:insightface.*")


# Session fixtures whose embedding caches are built in the background once a collected test needs them:
# fixture name -> (model, identity stride), in the order the builder takes them (the suite needs buffalo_s first).
_CACHED_EMBEDDINGS = {"lfw_dev_arcface": ("buffalo_s", 1), "lfw_dev_embeddings": ("dlib", 3)}
_cache_builder: subprocess.Popen[bytes] | None = None


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: only the tests that will run count
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start building the lfw-dev embedding caches the collected tests will need, in a background process at
    the lowest CPU priority (face_pipeline_tests/lfw_cache.py): on a fresh clone the builds (~4 minutes on
    2 cores) then overlap the tests before them instead of stopping the suite. FACE_TEST_BACKGROUND_CACHE=0:
    each cache is built when its first test needs it."""
    global _cache_builder
    from face_pipeline_tests.lfw_cache import BUILD_LOG, cache_path

    lfw_dev = datasets_root() / "lfw-dev"
    if os.environ.get("FACE_TEST_BACKGROUND_CACHE", "1") == "0" or not lfw_dev.is_dir():
        return
    needed = {name for item in items for name in getattr(item, "fixturenames", ()) if name in _CACHED_EMBEDDINGS}
    specs = [
        f"{model}:{stride}"
        for name, (model, stride) in _CACHED_EMBEDDINGS.items()
        if name in needed and not cache_path(REPO / ".cache", lfw_dev, model, stride).is_file()
    ]
    if not specs:
        return
    (REPO / ".cache").mkdir(exist_ok=True)
    with open(REPO / ".cache" / BUILD_LOG, "ab") as log:
        _cache_builder = subprocess.Popen(
            [sys.executable, "-m", "face_pipeline_tests.lfw_cache", str(lfw_dev), str(REPO / ".cache"), *specs],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the suite is handled below, not sent to the pool mid-write
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    """A suite that ends (or is interrupted) before the background build does stops it: a half-built cache is
    never kept (lfw_cache writes it under another name and renames it when complete)."""
    if _cache_builder is not None and _cache_builder.poll() is None:
        with suppress(ProcessLookupError):  # it may have finished in between
            os.killpg(_cache_builder.pid, 15)
        _cache_builder.wait(timeout=30)


def datasets_root() -> Path:
    return Path(os.environ.get("FACE_TEST_DATASETS", REPO.parent / "shared" / "datasets"))


def dataset(name: str) -> Path:
    path = datasets_root() / name
    if not path.is_dir():
        pytest.skip(f"dataset {name} not found at {path} (set FACE_TEST_DATASETS to the shared datasets folder)")
    return path


@pytest.fixture(scope="session")
def lfw_mini() -> Path:
    return dataset("lfw-mini")


@pytest.fixture(scope="session")
def lfw_dev() -> Path:
    return dataset("lfw-dev")


@contextmanager
def output_shown(config: pytest.Config) -> Iterator[None]:
    """pytest's capture (file descriptors included) off: a cache that takes minutes to build says so live."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        yield
        return
    with capture.global_and_fixture_disabled():
        yield


@pytest.fixture(scope="session")
def lfw_dev_embeddings(lfw_dev: Path, pytestconfig: pytest.Config) -> dict[str, np.ndarray]:
    """Real dlib embeddings of the main face of every photo of every third lfw-dev person (1,842 faces;
    .cache/lfw-dev-dlib-every3.npz, built on first use, ~2 min on 2 cores: all of lfw-dev took 4-7): for
    tests about the dlib space, the licence-free choice."""
    from face_pipeline_tests.lfw_cache import load_or_build

    with output_shown(pytestconfig):
        return load_or_build(lfw_dev, REPO / ".cache", "dlib", identity_stride=3)


@pytest.fixture(scope="session")
def lfw_dev_arcface(lfw_dev: Path, pytestconfig: pytest.Config) -> dict[str, np.ndarray]:
    """Real buffalo_s (ArcFace MobileFaceNet, 512-d) embeddings of every lfw-dev photo's main face
    (.cache/lfw-dev-buffalo_s.npz, built on first use): the default model's space."""
    from face_pipeline_tests.lfw_cache import load_or_build

    with output_shown(pytestconfig):
        return load_or_build(lfw_dev, REPO / ".cache", "buffalo_s")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the local PostgreSQL server; tests needing it fail loudly if it is down."""
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {exc}")
    finally:
        engine.dispose()
    return POSTGRES_ADMIN_URL


@contextmanager
def throwaway_database(admin_url: str, prefix: str = "fp_test") -> Iterator[str]:
    """A new, empty PostgreSQL database; dropped (even with connections still open) on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A throwaway database, dropped after the test."""
    with throwaway_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'faces.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def dlib_embedder():  # -> face_pipeline.vision.dlib_embedder.DlibEmbedder
    """One dlib embedder for the whole run, so its models load once (~1 s), on first use."""
    from face_pipeline.vision.dlib_embedder import DlibEmbedder

    return DlibEmbedder()
