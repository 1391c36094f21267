"""Dagster's run, event and schedule storage on the real PostgreSQL (127.0.0.1:5432), through
dagster-postgres.yaml: DAGSTER_PG_URL set -> the CLI's dagster_home() installs it -> jobs record there."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import create_engine, text

from face_pipeline.definitions import defs as definitions
from face_pipeline.defs.jobs import CLUSTER_DUAL, DAILY, RETRAIN
from face_pipeline.defs.runner import dagster_home
from face_pipeline.settings import load_settings
from face_pipeline_tests.photo_corpus import copy_people

pytestmark = pytest.mark.postgres


def test_jobs_record_their_runs_and_events_in_postgres(
    tmp_path: Path, lfw_mini: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos, people=2, photos_each=3)
    for name, value in {
        "DAGSTER_PG_URL": postgres_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "FACE_PHOTOS_DIR": str(photos),
        "FACE_DATA_DIR": str(tmp_path / "data"),
        "FACE_EMBEDDER": "auto",  # the default: buffalo_s, as no buffalo_l is in FACE_MODEL_DIR
        "FACE_MODEL_DIR": str(tmp_path / "insightface"),
        "FACE_WORKERS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    home = dagster_home(load_settings())
    defs = definitions()  # after the FACE_* variables: it reads them

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        daily = defs.resolve_job_def(DAILY).execute_in_process(instance=instance)
        cluster_dual = defs.resolve_job_def(CLUSTER_DUAL).execute_in_process(instance=instance)
        # too few labels to train: the retrain run observes the labels, then training says so and stops
        retrain = defs.resolve_job_def(RETRAIN).execute_in_process(instance=instance, raise_on_error=False)
        assert daily.success and cluster_dual.success and not retrain.success
        latest = instance.get_latest_materialization_event(dg.AssetKey("unknown_clusters"))
        assert latest is not None and latest.run_id == cluster_dual.run_id
        assert instance.get_latest_data_version_record(dg.AssetKey("face_labels")) is not None  # observed

    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            runs = dict(connection.execute(text("select run_id, pipeline_name from runs")).all())
            checks = connection.execute(
                text("select count(*) from event_logs where dagster_event_type = 'ASSET_CHECK_EVALUATION'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert runs == {daily.run_id: DAILY, cluster_dual.run_id: CLUSTER_DUAL, retrain.run_id: RETRAIN}
    assert checks == 12  # 6 checks in each of the two clustering runs, all recorded
    assert not (home / "history").exists()  # nothing went to SQLite files
