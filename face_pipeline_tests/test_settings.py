"""Settings: every FACE_* name of the seed, defaults, and one clear line for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from face_pipeline.settings import SettingsError, load_settings

SEED_VARIABLES = {
    "FACE_MODEL_NAME": "buffalo_l",
    "FACE_MODEL_CHECKPOINT": "/models/head.pt",
    "FACE_TRAINING_ENABLED": "true",
    "FACE_TRIPLET_MARGIN": "0.3",
    "FACE_TRAINING_EPOCHS": "7",
    "FACE_BATCH_SIZE": "64",
    "FACE_LEARNING_RATE": "0.001",
    "FACE_PERSON_MATCH_THRESHOLD": "0.7",
    "FACE_UNKNOWN_CLUSTERING_METHOD": "agglomerative",
    "FACE_UNKNOWN_MIN_CLUSTER_SIZE": "5",
    "FACE_UNKNOWN_EPS": "0.4",
    "FACE_PHOTOS_DIR": "/photos",
    "FACE_DATA_DIR": "/var/faces",
    "FACE_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/faces",
    "FACE_QDRANT_URL": "http://127.0.0.1:6333",
    "FACE_MODEL_DIR": "/models/insightface",
    "FACE_DEVICE": "cuda",
}


def test_every_seed_variable_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    for name, value in SEED_VARIABLES.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert (s.model_name, s.model_checkpoint, s.training_enabled) == ("buffalo_l", "/models/head.pt", True)
    assert (s.triplet_margin, s.training_epochs, s.batch_size, s.learning_rate) == (0.3, 7, 64, 0.001)
    assert (s.person_match_threshold, s.unknown_clustering_method) == (0.7, "agglomerative")
    assert (s.unknown_min_cluster_size, s.unknown_eps) == (5, 0.4)
    assert (s.photos_dir, s.data_dir, s.model_dir) == (Path("/photos"), Path("/var/faces"), Path("/models/insightface"))
    assert s.resolved_database_url == SEED_VARIABLES["FACE_DATABASE_URL"]
    assert (s.qdrant_url, s.device) == ("http://127.0.0.1:6333", "cuda")


def test_defaults_keep_everything_under_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path / "d"))
    s = load_settings()
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'd' / 'face_pipeline.db'}"
    assert s.vectors_dir == tmp_path / "d" / "vectors" and s.qdrant_url is None
    assert s.person_match_threshold is None  # the embedding space decides
    # None: the embedding space decides (domain.assignment.thresholds_for_space)
    assert (s.unknown_clustering_method, s.unknown_min_cluster_size, s.device) == (None, None, "auto")


def test_env_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("FACE_TRAINING_EPOCHS=3\nFACE_UNKNOWN_EPS=0.25\n")
    s = load_settings()
    assert (s.training_epochs, s.unknown_eps) == (3, 0.25)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FACE_DEVICE", "tpu"),
        ("FACE_TRAINING_EPOCHS", "many"),
        ("FACE_UNKNOWN_CLUSTERING_METHOD", "kmeans"),
        ("FACE_PERSON_MATCH_THRESHOLD", "1.5"),
        ("FACE_DATABASE_URL", "faces.db"),
        ("FACE_UNKNOWN_MIN_CLUSTER_SIZE", "1"),
    ],
)
def test_invalid_value_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=rf"{name}='{value}'") as error:
        load_settings()
    assert "\n" not in str(error.value)
