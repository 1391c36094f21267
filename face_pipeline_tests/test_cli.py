"""The `face-pipeline` CLI: backfill through Dagster (visible in run history), stats, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from face_pipeline.cli import app
from face_pipeline_tests.photo_corpus import copy_people

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path, lfw_mini: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos, people=2, photos_each=2)
    monkeypatch.setenv("FACE_PHOTOS_DIR", str(photos))
    monkeypatch.setenv("FACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("FACE_MODEL_DIR", str(tmp_path / "insightface"))  # no buffalo_l: auto picks buffalo_s
    monkeypatch.delenv("FACE_EMBEDDER", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_backfill_runs_through_dagster_and_stats_reports_it(cli_env: Path):
    result = runner.invoke(app, ["faces", "backfill", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "4 files, 4 new" in result.output and "in 3 photos" in result.output

    with dg.DagsterInstance.from_config(str(cli_env / "dagster_home")) as instance:
        runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].tags["launched_by"] == "face-pipeline CLI"

    result = runner.invoke(app, ["faces", "stats"])
    assert result.exit_code == 0, result.output
    assert "done 3" in result.output and "pending 1" in result.output
    assert "active space: insightface_buffalo_s" in result.output  # the default model's space


def test_bad_argument_is_one_line_and_changes_nothing(cli_env: Path):
    result = runner.invoke(app, ["faces", "backfill", "--limit", "0"])
    assert result.exit_code == 2
    assert "--limit" in result.output
    assert not (cli_env / "data").exists()


def test_bad_setting_is_one_line_naming_the_variable(cli_env: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FACE_DEVICE", "tpu")
    result = runner.invoke(app, ["faces", "stats"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "FACE_DEVICE='tpu'" in result.output


def test_missing_photos_folder_is_one_line(cli_env: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FACE_PHOTOS_DIR", str(cli_env / "nowhere"))
    result = runner.invoke(app, ["faces", "backfill"])
    assert result.exit_code == 2
    last_line = result.output.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "photos folder not found" in last_line


def test_module_entry_point_prints_help():
    completed = subprocess.run(
        [sys.executable, "-m", "face_pipeline.cli", "faces", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0 and "backfill" in completed.stdout


def test_everyday_messages_say_what_a_user_needs(cli_env: Path, monkeypatch: pytest.MonkeyPatch):
    """Frictions a new user met (issue 14): each message names what happened and what to do."""
    empty = cli_env / "empty"
    empty.mkdir()
    monkeypatch.setenv("FACE_PHOTOS_DIR", str(empty))
    result = runner.invoke(app, ["faces", "backfill"])
    assert result.exit_code == 0 and f"warning: no photos under {empty}" in result.output

    monkeypatch.setenv("FACE_PHOTOS_DIR", str(cli_env / "photos"))
    assert runner.invoke(app, ["faces", "backfill"]).exit_code == 0
    assert runner.invoke(app, ["faces", "cluster", "--min-cluster-size", "2"]).exit_code == 0
    from face_pipeline.domain.naming import UNKNOWN_PREFIX
    from face_pipeline.services.library import Library
    from face_pipeline.settings import load_settings
    from face_pipeline.storage.models import FaceInstance

    library = Library.from_settings(load_settings())
    with library.db.session() as session:
        face, cluster = session.execute(
            select(FaceInstance.id, FaceInstance.cluster_id).where(
                FaceInstance.cluster_id.startswith(UNKNOWN_PREFIX, autoescape=True)
            )
        ).first()
    library.close()

    assert runner.invoke(app, ["faces", "label", cluster, "Ann Example"]).exit_code == 0
    again = runner.invoke(app, ["faces", "label", cluster, "Ann Example"])
    assert again.exit_code == 2 and f"{cluster} is gone: its faces were named 'Ann Example' (person_" in again.output

    rejected = runner.invoke(app, ["faces", "reject", str(face)])
    assert rejected.exit_code == 0 and f"face {face} is not 'Ann Example' (person_" in rejected.output
    second = runner.invoke(app, ["faces", "reject", str(face)])
    assert second.exit_code == 2 and "--person" in second.output

    exported = runner.invoke(app, ["faces", "export"])
    target = cli_env / "data" / "exports" / "faces.csv"
    assert exported.exit_code == 0 and f"written to {target}" in exported.output and target.is_file()
    assert not (cli_env / "faces.csv").exists()  # nothing lands in the working directory
