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


def _library_state() -> tuple[dict[int, tuple[str | None, str | None, bool]], int, set[tuple[int, str]]]:
    """Every face's (person_id, cluster_id, user_confirmed), the number of audit events, the rejections."""
    from sqlalchemy import func

    from face_pipeline.services.library import Library
    from face_pipeline.settings import load_settings
    from face_pipeline.storage.models import FaceAssignmentEvent, FaceInstance, FaceRejection

    library = Library.from_settings(load_settings())
    try:
        with library.db.session() as session:
            faces = {
                f.id: (f.person_id, f.cluster_id, f.user_confirmed)
                for f in session.execute(
                    select(
                        FaceInstance.id, FaceInstance.person_id, FaceInstance.cluster_id, FaceInstance.user_confirmed
                    )
                )
            }
            events = session.scalar(select(func.count()).select_from(FaceAssignmentEvent)) or 0
            rejections = {(r.face_id, r.person_id) for r in session.scalars(select(FaceRejection))}
    finally:
        library.close()
    return faces, int(events), rejections


def _payloads() -> dict[int, dict[str, object]]:
    from face_pipeline.services.library import Library
    from face_pipeline.services.space_registry import active_space
    from face_pipeline.settings import load_settings

    library = Library.from_settings(load_settings())
    try:
        with library.db.session() as session:
            space = active_space(session)
            assert space is not None
            name = space.name
        with library.vectors() as store:
            return store.fetch_payloads(name)
    finally:
        library.close()


def test_batch_label_and_reject_are_one_transaction_each(cli_env: Path, monkeypatch: pytest.MonkeyPatch):
    """`faces label --from-csv` (cluster ids and face ids) and `faces reject ID ID ...`: all or nothing, a bad row
    is one line naming it, one audit event per face, vector payloads follow."""
    monkeypatch.setenv("FACE_PHOTOS_DIR", str(cli_env / "photos"))
    assert runner.invoke(app, ["faces", "backfill"]).exit_code == 0
    assert runner.invoke(app, ["faces", "cluster", "--min-cluster-size", "2"]).exit_code == 0
    faces, events, _ = _library_state()
    clusters = sorted({c for _, c, _ in faces.values() if c and c.startswith("unknown_cluster_")})
    assert len(clusters) >= 2, faces  # 2 people x 2 photos
    in_first = sorted(i for i, (_, c, _) in faces.items() if c == clusters[0])
    loose = sorted(i for i, (_, c, _) in faces.items() if c != clusters[0])

    csv_file = cli_env / "names.csv"
    bad_rows = [
        "cluster_id,name",
        f"{clusters[0]},Ann Example",
        "",
        "# a comment",
        f"{loose[0]},Bo Example",
        "99999,Nobody",
    ]
    for bad, line, words in [
        ("99999,Nobody", 6, "unknown face: 99999"),
        (f"{in_first[0]},Bo Example", 6, f"face {in_first[0]} was already named on line 2"),
        ("just-one-cell", 6, "expected `cluster_id or face_id,name`"),
        ("unknown_cluster_999,Cy", 6, "unknown cluster: unknown_cluster_999"),
        (f"{loose[1]},\u0007", 6, "control characters"),
    ]:
        csv_file.write_text("\n".join([*bad_rows[:-1], bad]) + "\n")
        result = runner.invoke(app, ["faces", "label", "--from-csv", str(csv_file)])
        assert result.exit_code == 2, result.output
        assert result.output.strip().count("\n") == 0, result.output  # one line
        assert f"line {line}" in result.output and words in result.output, result.output
        assert _library_state()[:2] == (faces, events)  # nothing changed, no event

    csv_file.write_text("\n".join(bad_rows[:-1]) + "\n")
    result = runner.invoke(app, ["faces", "label", "--from-csv", str(csv_file)])
    assert result.exit_code == 0, result.output
    assert f"2 rows, {len(in_first) + 1} faces named for 2 people (2 new)" in result.output
    after, events_after, _ = _library_state()
    named = [*in_first, loose[0]]
    assert all(after[i][2] and after[i][0] is not None for i in named)
    assert after[in_first[0]][0] != after[loose[0]][0]  # two people
    assert events_after == events + len(named)  # one audit event per face
    payloads = _payloads()
    assert all(payloads[i]["person_id"] == after[i][0] for i in named)

    # Many faces rejected at once; a bad id among them changes nothing.
    result = runner.invoke(app, ["faces", "reject", str(named[0]), "99999"])
    assert result.exit_code == 2 and "unknown face: 99999" in result.output
    assert _library_state()[:2] == (after, events_after)
    result = runner.invoke(app, ["faces", "reject", *map(str, named)])
    assert result.exit_code == 0, result.output
    assert all(f"face {i} is not " in result.output for i in named)
    final, events_final, rejections = _library_state()
    assert rejections == {(i, after[i][0]) for i in named}
    assert all(final[i] == (None, f"unknown_noise_{i}", False) for i in named)
    assert events_final == events_after + len(named)
    payloads = _payloads()
    assert all(payloads[i]["person_id"] is None and payloads[i]["cluster_id"] == f"unknown_noise_{i}" for i in named)
