"""Orchestration: lineage, jobs, schedules, the label-growth sensor and the asset checks, on real state.

Layers: the definitions load with the issue's lineage; schedules and the sensor tick (build_schedule_context,
build_sensor_context) against a real library whose faces were found by the default model (buffalo_s) and
named through the labels service; jobs run in process and their checks pass, or fail naming the faces when the
state is broken.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from sqlalchemy import delete, select, update

from face_pipeline.definitions import defs as definitions
from face_pipeline.defs import checks
from face_pipeline.defs.jobs import CLUSTER_DUAL, DAILY, RETRAIN, VECTOR_STORE_TAG, WORKER_TAG
from face_pipeline.defs.labels_source import face_labels_observer
from face_pipeline.defs.resources import VECTOR_STORE_POOL, SettingsResource, pipeline_resources
from face_pipeline.defs.runner import MARKER_PREFIX, dagster_home
from face_pipeline.defs.schedules import build_schedules
from face_pipeline.defs.sensors import LABEL_COUNT_TAG, TRIGGER_TAG, label_growth_sensor
from face_pipeline.domain.metrics import PipelineFigures
from face_pipeline.services.cluster_dual import CLUSTER_DUAL_ASSETS
from face_pipeline.services.integrity import (
    cluster_id_problems,
    promotion_evidence,
    user_label_overrides,
    vector_store_sync,
)
from face_pipeline.services.label_growth import count_labels
from face_pipeline.services.labels import label_face
from face_pipeline.services.library import Library
from face_pipeline.services.space_registry import GateResult, GateVerdict
from face_pipeline.settings import SettingsError, load_settings
from face_pipeline.storage.models import EmbeddingSpaceRow, FaceAssignmentEvent, FaceInstance, SpaceStatus, utcnow
from face_pipeline_tests.photo_corpus import copy_people
from face_pipeline_tests.test_dual_mode import faces
from face_pipeline_tests.test_ingest import SPACE, ingest, make_context

CLUSTERING_STEPS = ("person_centroids", "supervised_assignments", "unknown_clusters")
PEOPLE = 6  # lfw-mini people, 6 photos each; 5 of them x 5 faces is the training minimum


def asset_keys(defs: dg.Definitions) -> set[str]:
    return {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}


def job_steps(defs: dg.Definitions, job: str) -> list[str]:
    return [node.name for node in defs.resolve_job_def(job).nodes_in_topological_order]


# --- definitions ---------------------------------------------------------------------------------------


def test_definitions_hold_the_issue_lineage_jobs_schedules_sensor_and_checks():
    defs = definitions()

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()

    def parents(name: str) -> set[str]:
        return {key.to_user_string() for key in graph.get(dg.AssetKey(name)).parent_keys}

    assert graph.get(dg.AssetKey("face_labels")).is_observable
    assert {name: parents(name) for name in asset_keys(defs)} == {
        "face_labels": set(),
        "photo_catalog": set(),
        "detected_faces": {"photo_catalog"},
        "trained_projection_checkpoint": {"face_labels"},
        "regenerated_embeddings": {"detected_faces", "trained_projection_checkpoint"},
        "person_centroids": {"regenerated_embeddings", "face_labels"},
        "supervised_assignments": {"person_centroids"},
        "unknown_clusters": {"supervised_assignments"},
        "staged_faces": {"detected_faces"},
        "reembedded_faces": {"staged_faces"},
    }

    clustering = ["person_centroids", "supervised_assignments", "unknown_clusters"]
    assets_of = {
        job: [step for step in job_steps(defs, job) if step in asset_keys(defs)]
        for job in (DAILY, RETRAIN, "ingest", CLUSTER_DUAL, "reembed")
    }
    assert assets_of == {
        DAILY: ["photo_catalog", "detected_faces", "regenerated_embeddings", *clustering],
        RETRAIN: ["face_labels", "trained_projection_checkpoint", "regenerated_embeddings", *clustering],
        "ingest": ["photo_catalog", "detected_faces"],
        CLUSTER_DUAL: ["regenerated_embeddings", *clustering],  # what `faces cluster-dual` runs
        "reembed": ["staged_faces", "reembedded_faces"],
    }
    assert tuple(assets_of[CLUSTER_DUAL]) == CLUSTER_DUAL_ASSETS  # the sequence run_cluster_dual runs outside Dagster
    for job in (DAILY, RETRAIN, CLUSTER_DUAL):  # the checks of the selected assets run with them
        assert {"supervised_assignments_assignment_checks", "unknown_clusters_assignment_checks"} <= set(
            job_steps(defs, job)
        )
        assert defs.resolve_job_def(job).run_tags[VECTOR_STORE_TAG] == "write"
    assert defs.resolve_job_def(RETRAIN).run_tags[WORKER_TAG] == "gpu"

    assert {s.name for s in defs.schedules or []} == {"daily_backfill_and_cluster_schedule", "monthly_retrain_schedule"}
    assert [s.name for s in defs.sensors or []] == ["label_growth_sensor", "dead_run_sensor", "face_labels_observer"]
    check_keys = {(k.asset_key.to_user_string(), k.name): graph.get_check_spec(k) for k in graph.asset_check_keys}
    assert {key: spec.blocking for key, spec in check_keys.items()} == {
        ("regenerated_embeddings", checks.VECTORS_MATCH_SQL): True,
        ("regenerated_embeddings", checks.PROMOTED_SPACE_BEATS_RAW): False,
        ("supervised_assignments", checks.ONE_CLUSTER_PER_FACE): True,
        ("supervised_assignments", checks.USER_LABELS_KEPT): True,
        ("unknown_clusters", checks.ONE_CLUSTER_PER_FACE): True,
        ("unknown_clusters", checks.USER_LABELS_KEPT): True,
    }


def test_vector_store_writers_share_one_pool_and_the_instance_limits_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    defs = definitions()

    pools = {
        node.name: node.definition.pool
        for node in defs.resolve_job_def(DAILY).nodes_in_topological_order
        if node.name
        in (*CLUSTERING_STEPS, "detected_faces", "regenerated_embeddings", "regenerated_embeddings_vectors_match_sql")
    }
    assert set(pools.values()) == {VECTOR_STORE_POOL} and len(pools) == 6
    training = defs.resolve_job_def(RETRAIN).nodes_in_topological_order[1]
    assert (training.name, training.definition.pool) == ("trained_projection_checkpoint", "gpu")

    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = dagster_home(load_settings(data_dir=tmp_path))
    settings = yaml.safe_load((home / "dagster.yaml").read_text())
    assert settings["concurrency"]["pools"]["default_limit"] == 1  # face_vector_store and gpu
    assert {"key": VECTOR_STORE_TAG, "value": "write", "limit": 1} in settings["concurrency"]["runs"][
        "tag_concurrency_limits"
    ]
    with dg.DagsterInstance.from_config(str(home)) as instance:  # the file is a valid instance config
        assert instance.get_settings("concurrency")["pools"]["default_limit"] == 1


def test_the_instance_file_follows_dagster_pg_url_and_leaves_a_hand_written_one_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    settings = load_settings(data_dir=tmp_path)
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    instance_file = dagster_home(settings) / "dagster.yaml"
    assert instance_file.read_text().startswith(MARKER_PREFIX) and "postgres" not in yaml.safe_load(
        instance_file.read_text()
    ).get("storage", {})

    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://postgres@127.0.0.1:5432/dagster")
    dagster_home(settings)
    assert yaml.safe_load(instance_file.read_text())["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}

    instance_file.write_text("telemetry:\n  enabled: false\n")  # the user's own file
    monkeypatch.delenv("DAGSTER_PG_URL")
    dagster_home(settings)
    assert instance_file.read_text() == "telemetry:\n  enabled: false\n"


def test_schedules_run_at_the_configured_hour_and_zone_with_the_daily_limit():
    settings = load_settings(schedule_hour=5, schedule_timezone="Europe/Berlin", daily_limit=40)
    daily, monthly = build_schedules(settings)
    assert (daily.cron_schedule, daily.execution_timezone) == ("0 5 * * *", "Europe/Berlin")
    assert (monthly.cron_schedule, monthly.execution_timezone) == ("0 6 1 * *", "Europe/Berlin")
    assert daily.default_status == dg.DefaultScheduleStatus.RUNNING

    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 12, 1, 4, 0))
        requests = daily.evaluate_tick(context).run_requests or []
    assert len(requests) == 1
    assert requests[0].run_config["ops"]["detected_faces"]["config"]["limit"] == 40

    default = build_schedules(load_settings())[0]
    assert (default.cron_schedule, default.execution_timezone) == ("0 2 * * *", "UTC")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("schedule_hour", 24, "FACE_SCHEDULE_HOUR=24"),
        ("schedule_timezone", "Mars/Olympus_Mons", "IANA time zone"),
        ("retrain_min_growth", -0.1, "FACE_RETRAIN_MIN_GROWTH"),
        ("daily_limit", 0, "FACE_DAILY_LIMIT=0"),
    ],
)
def test_orchestration_settings_reject_bad_values(variable: str, value: object, message: str):
    with pytest.raises(SettingsError, match=message):
        load_settings(**{variable: value})


# --- a real library: lfw-mini faces found by buffalo_s, named through the labels service ----------------


@pytest.fixture(scope="module")
def ingested(lfw_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 people x 6 photos of lfw-mini, ingested once; tests work on copies of the data folder."""
    root = tmp_path_factory.mktemp("orchestration")
    copy_people(lfw_mini, root / "photos", people=PEOPLE, photos_each=6)
    context = make_context(root, root / "photos", workers=2)
    ingest(context)
    context.close()
    return root


@pytest.fixture
def library(ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Library]:
    """A copy of the library; FACE_* variables point every Dagster resource at it."""
    shutil.copytree(ingested / "data", tmp_path / "data")
    for name, value in {
        "FACE_PHOTOS_DIR": str(ingested / "photos"),  # read only: the catalog finds nothing new
        "FACE_DATA_DIR": str(tmp_path / "data"),
        "FACE_EMBEDDER": "auto",  # the product's default: it keeps the library's model (buffalo_s)
        "FACE_MODEL_DIR": str(tmp_path / "insightface"),  # no buffalo_l here, whatever ~/.insightface holds
        "FACE_WORKERS": "1",
        "FACE_TRAINING_ENABLED": "true",
        "FACE_RETRAIN_MIN_NEW_LABELS": "20",
        "FACE_RETRAIN_MIN_GROWTH": "0.2",
    }.items():
        monkeypatch.setenv(name, value)
    context = make_context(tmp_path, ingested / "photos")
    yield context
    context.close()


def label_people(context: Library, first: int, count: int, per_person: int = 5) -> None:
    """Name the main face of `per_person` photos of people first..first+count-1 (folder order, among the
    people whose main face was found in at least 5 photos)."""
    state = faces(context)
    by_person: dict[str, list[int]] = {}
    for face_id, face in sorted(state.items()):
        if face["who"]:
            by_person.setdefault(str(face["who"]), []).append(face_id)
    people = sorted(who for who, ids in by_person.items() if len(ids) >= 5)
    assert len(people) >= first + count, f"only {len(people)} people with 5 faces found"
    for who in people[first : first + count]:
        for face_id in by_person[who][:per_person]:
            label_face(context, face_id, who.replace("_", " "))


def resources(context: Library) -> dict[str, object]:
    settings = context.settings
    return pipeline_resources(SettingsResource(photos_dir=str(settings.photos_dir), data_dir=str(settings.data_dir)))


def tick(instance: dg.DagsterInstance, context: Library, cursor: str | None = None) -> object:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources(context)) as sensor_context:
        return label_growth_sensor(sensor_context)


def gate_metrics(promote: bool) -> dict[str, object]:
    """The promotion gate's result as training keeps it: held-out figures that beat the raw space (or not)."""
    raw = PipelineFigures(0.95, 0.60, 0.0, 0.95, grouped=0.8, n_queries=200, n_strangers=50)
    projected = PipelineFigures(0.95, 0.70 if promote else 0.60, 0.0, 0.95, grouped=0.8, n_queries=200, n_strangers=50)
    verdict = GateVerdict(promote, "as the test says")
    return GateResult(promote, "as the test says", verdict, verdict, raw, projected).as_metrics()


def promote(context: Library, label_count: int, *, promote: bool = True) -> None:
    """A trained projection made active, as the training step records it."""
    with context.db.session() as session:
        session.execute(update(EmbeddingSpaceRow).values(status=SpaceStatus.RETIRED))
        session.add(
            EmbeddingSpaceRow(
                name=f"projection_{label_count}",
                kind="projection",
                model_name="projection head",
                dim=64,
                base_space=SPACE,
                status=SpaceStatus.ACTIVE,
                label_count=label_count,
                metrics=gate_metrics(promote),
                activated_at=utcnow(),
            )
        )


def test_sensor_skips_while_training_is_disabled(library: Library, monkeypatch: pytest.MonkeyPatch):
    label_people(library, 0, 5)
    monkeypatch.setenv("FACE_TRAINING_ENABLED", "false")
    with dg.instance_for_test() as instance:
        result = tick(instance, library)
    assert isinstance(result, dg.SkipReason) and "FACE_TRAINING_ENABLED is false" in str(result.skip_message)


def test_sensor_skips_below_the_training_minimum_saying_what_is_missing(library: Library):
    label_people(library, 0, 4)  # 4 people x 5 faces: one person short
    with dg.instance_for_test() as instance:
        result = tick(instance, library)
    assert isinstance(result, dg.SkipReason)
    assert "too few labels" in str(result.skip_message) and "4 people have >= 5 labelled faces" in str(
        result.skip_message
    )


def test_sensor_requests_a_retrain_when_labels_grew_and_honours_its_cursor(
    library: Library, monkeypatch: pytest.MonkeyPatch
):
    label_people(library, 0, 5)
    with dg.instance_for_test() as instance:
        first = tick(instance, library)
        assert isinstance(first, dg.SensorResult) and len(first.run_requests or []) == 1
        request = (first.run_requests or [])[0]
        assert request.run_key == "labels-0-to-25" and request.tags["face_pipeline/label_count"] == "25"
        assert json.loads(first.cursor or "")["label_count"] == 25

        again = tick(instance, library, first.cursor)  # nothing new since the request
        assert isinstance(again, dg.SkipReason) and "0 new labels since the last retrain request" in str(
            again.skip_message
        )
        lost_cursor = tick(instance, library)  # a lost cursor asks again, under the same run key: deduplicated
        assert isinstance(lost_cursor, dg.SensorResult)
        assert (lost_cursor.run_requests or [])[0].run_key == request.run_key

        label_people(library, 5, 1)  # 5 more: 30 labels, 20% more but fewer than 20 new
        few = tick(instance, library, first.cursor)
        assert isinstance(few, dg.SkipReason) and "5 new labels" in str(few.skip_message)
        monkeypatch.setenv("FACE_RETRAIN_MIN_NEW_LABELS", "5")
        grown = tick(instance, library, first.cursor)
        assert isinstance(grown, dg.SensorResult)
        assert [r.run_key for r in grown.run_requests or []] == ["labels-25-to-30"]


def test_sensor_never_starts_a_second_retrain_while_one_is_queued_or_running(library: Library):
    defs = definitions()

    label_people(library, 0, 5)
    with dg.instance_for_test() as instance:
        for status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED):
            run = instance.create_run_for_job(defs.resolve_job_def(RETRAIN), status=status)
            result = tick(instance, library)
            assert isinstance(result, dg.SkipReason)
            assert f"retrain run {run.run_id} is {status.value.lower()}" in str(result.skip_message)
            instance.report_run_canceled(run)
        assert isinstance(tick(instance, library), dg.SensorResult)


def test_sensor_measures_growth_from_the_last_promoted_checkpoint(library: Library, monkeypatch: pytest.MonkeyPatch):
    label_people(library, 0, 6)  # 30 labels
    promote(library, 25)
    monkeypatch.setenv("FACE_RETRAIN_MIN_NEW_LABELS", "5")
    monkeypatch.setenv("FACE_RETRAIN_MIN_GROWTH", "0.5")
    with dg.instance_for_test() as instance:
        slow = tick(instance, library)
        assert isinstance(slow, dg.SkipReason)
        assert "since the promoted checkpoint projection_25 (25 labels)" in str(slow.skip_message)
        monkeypatch.setenv("FACE_RETRAIN_MIN_GROWTH", "0.2")
        result = tick(instance, library)
    assert isinstance(result, dg.SensorResult)
    assert [r.run_key for r in result.run_requests or []] == ["labels-25-to-30"]


def test_monthly_retrain_needs_training_enabled_labels_and_something_new(
    library: Library, monkeypatch: pytest.MonkeyPatch
):
    monthly = build_schedules(load_settings())[1]
    label_people(library, 0, 5)

    def run(instance: dg.DagsterInstance) -> object:
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2026, 12, 1, 3, 0, tzinfo=UTC),
            resources=resources(library),
        ) as context:
            return monthly(context)

    with dg.instance_for_test() as instance:
        monkeypatch.setenv("FACE_TRAINING_ENABLED", "false")
        assert isinstance(run(instance), dg.SkipReason)
        monkeypatch.setenv("FACE_TRAINING_ENABLED", "true")
        request = run(instance)
        assert isinstance(request, dg.RunRequest) and request.run_key == "monthly-retrain-2026-12"
        promote(library, 25)
        nothing_new = run(instance)
    assert isinstance(nothing_new, dg.SkipReason)
    assert "0 new labels since the promoted checkpoint projection_25" in str(nothing_new.skip_message)


def reject(context: Library, label_count: int) -> None:
    """A trained projection the gate refused, as the training step records it (the raw space stays active)."""
    with context.db.session() as session:
        session.add(
            EmbeddingSpaceRow(
                name=f"rejected_{label_count}",
                kind="projection",
                model_name="projection head",
                dim=64,
                base_space=SPACE,
                status=SpaceStatus.REJECTED,
                label_count=label_count,
                metrics=gate_metrics(False),
            )
        )


def test_monthly_retrain_follows_the_sensors_rule_and_never_retrains_unchanged_labels(
    library: Library, monkeypatch: pytest.MonkeyPatch
):
    """Nothing was ever promoted and the last checkpoint was refused: neither the schedule (no cursor) nor a
    sensor that lost its cursor asks again for the labels that checkpoint was trained on; new labels do."""
    monthly = build_schedules(load_settings())[1]

    def month(instance: dg.DagsterInstance, when: datetime) -> object:
        with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=when, resources=resources(library)
        ) as context:
            return monthly(context)

    label_people(library, 0, 5)  # 25 labels
    reject(library, 25)
    monkeypatch.setenv("FACE_RETRAIN_MIN_NEW_LABELS", "5")
    with dg.instance_for_test() as instance:
        for result in (month(instance, datetime(2026, 12, 1, 3, tzinfo=UTC)), tick(instance, library)):
            assert isinstance(result, dg.SkipReason)
            assert "0 new labels since the last trained checkpoint rejected_25 (25 labels)" in str(result.skip_message)

        label_people(library, 5, 1)  # 30 labels: 5 new, 20% growth
        request = month(instance, datetime(2027, 1, 1, 3, tzinfo=UTC))
        sensed = tick(instance, library)
    assert isinstance(request, dg.RunRequest) and request.run_key == "monthly-retrain-2027-01"
    assert request.tags == {LABEL_COUNT_TAG: "30", TRIGGER_TAG: "monthly schedule"}
    assert isinstance(sensed, dg.SensorResult)
    (sensor_request,) = sensed.run_requests or []
    assert sensor_request.run_key == "labels-25-to-30"
    assert sensor_request.tags == {LABEL_COUNT_TAG: "30", TRIGGER_TAG: "label_growth_sensor"}


def test_face_labels_observation_changes_version_when_a_label_changes(library: Library):
    defs = definitions()

    def observe(instance: dg.DagsterInstance) -> dict[str, object]:
        result = defs.resolve_job_def(RETRAIN).execute_in_process(
            instance=instance, op_selection=["face_labels"], raise_on_error=True
        )
        (event,) = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
        observation = event.event_specific_data.asset_observation  # type: ignore[union-attr]
        return {
            "version": observation.tags["dagster/data_version"],
            **{k: v.value for k, v in observation.metadata.items()},
        }

    with dg.instance_for_test() as instance:
        before = observe(instance)
        label_people(library, 0, 1, per_person=2)
        after = observe(instance)
    assert before["labelled_faces"] == 0 and after["labelled_faces"] == 2 and after["people"] == 1
    assert before["version"] != after["version"]
    assert after["version"] == count_labels(library.db).fingerprint


def test_face_labels_observer_records_an_observation_whenever_labels_change(library: Library):
    """The daemon's sensor observes face_labels when the labels' fingerprint changed (CLI or API edits need no
    Dagster), and skips when nothing changed, also for a fresh cursor after an observation was recorded."""

    def observe(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources(library)) as context:
            result = face_labels_observer(context)
        if isinstance(result, dg.SensorResult):
            for event in result.asset_events:  # stored as the daemon stores a sensor's asset events
                assert isinstance(event, dg.AssetObservation)
                instance.report_runless_asset_event(event)
        assert isinstance(result, dg.SensorResult | dg.SkipReason)
        return result

    def observations(instance: dg.DagsterInstance) -> list[dg.AssetObservation]:
        records = instance.fetch_observations(dg.AssetKey("face_labels"), limit=10).records
        return [r.asset_observation for r in records if r.asset_observation is not None]

    with dg.instance_for_test() as instance:
        assert observations(instance) == []  # "Never observed"
        first = observe(instance, None)
        assert isinstance(first, dg.SensorResult) and first.cursor == count_labels(library.db).fingerprint
        assert len(observations(instance)) == 1
        assert isinstance(observe(instance, first.cursor), dg.SkipReason)
        assert isinstance(observe(instance, None), dg.SkipReason)  # the recorded version counts too

        label_people(library, 0, 1, per_person=2)
        second = observe(instance, first.cursor)
        assert isinstance(second, dg.SensorResult)
        newest = observations(instance)[0]
        assert newest.tags["dagster/data_version"] == count_labels(library.db).fingerprint != first.cursor
        assert newest.metadata["labelled_faces"].value == 2 and newest.metadata["people"].value == 1
        assert isinstance(observe(instance, second.cursor), dg.SkipReason)

        # The UI's staleness reads the same record: the observed version is face_labels' current one.
        record = instance.get_latest_data_version_record(dg.AssetKey("face_labels"))
        assert record is not None and record.asset_observation is not None
        assert record.asset_observation.tags["dagster/data_version"] == second.cursor


def test_definitions_pick_the_executor_from_face_executor(monkeypatch: pytest.MonkeyPatch):
    """One Python per run by default (the in-process executor; pools are still honoured, as for CLI runs);
    FACE_EXECUTOR=multiprocess brings back a process per step."""
    monkeypatch.delenv("FACE_EXECUTOR", raising=False)
    job = definitions().resolve_job_def(DAILY)
    assert job.executor_def.name == dg.in_process_executor.name
    monkeypatch.setenv("FACE_EXECUTOR", "multiprocess")
    assert definitions().resolve_job_def(DAILY).executor_def.name == dg.multiprocess_executor.name
    monkeypatch.setenv("FACE_EXECUTOR", "threads")
    with pytest.raises(SettingsError, match="FACE_EXECUTOR"):
        definitions()


# --- jobs in process: checks pass, and fail naming the faces -------------------------------------------


def check_results(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    evaluations = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            evaluations[(evaluation.asset_key.to_user_string(), evaluation.check_name)] = evaluation  # type: ignore[union-attr]
    return evaluations


def test_daily_job_runs_every_step_and_its_checks_pass(library: Library):
    defs = definitions()

    label_people(library, 0, 2)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(DAILY).execute_in_process(instance=instance)
    assert result.success
    evaluations = check_results(result)
    assert len(evaluations) == 6 and all(e.passed for e in evaluations.values()), evaluations
    clusters = result.asset_materializations_for_node("unknown_clusters")[0].metadata
    assert clusters["faces_person"].value >= 10  # the 2 named people's labelled faces at least
    assert "cluster_sizes" in clusters and "split" in clusters
    detected = result.asset_materializations_for_node("detected_faces")[0].metadata
    assert detected["photos"].value == 0  # nothing new in the folder


def test_checks_name_the_offending_faces(library: Library):
    label_people(library, 0, 1)
    assert all(f.passed for f in (cluster_id_problems(library.db), user_label_overrides(library.db)))
    with library.vectors() as vectors:
        assert vector_store_sync(library.db, vectors).passed  # the labels' payloads followed them
    with library.db.session() as session:
        ids = session.scalars(select(FaceInstance.id).order_by(FaceInstance.id)).all()
        confirmed = session.scalars(select(FaceInstance.id).where(FaceInstance.user_confirmed.is_(True))).all()
        session.execute(update(FaceInstance).where(FaceInstance.id == ids[1]).values(cluster_id=None))
        session.execute(update(FaceInstance).where(FaceInstance.id == ids[2]).values(cluster_id="person_abc"))
        session.add(FaceAssignmentEvent(face_id=confirmed[0], action="assign", source="supervised"))
    broken = cluster_id_problems(library.db)
    assert not broken.passed
    assert broken.examples == {"faces_without_cluster": [ids[1]], "unnamed_faces_in_a_person_cluster": [ids[2]]}
    assert f"face ids [{ids[1]}]" in broken.description
    overridden = user_label_overrides(library.db)
    assert not overridden.passed and overridden.examples == {
        "confirmed_faces_changed_by_an_automatic_run": [confirmed[0]]
    }

    with library.vectors() as vectors:
        stale = vector_store_sync(library.db, vectors)  # the SQL edits above never reached the payloads
        assert not stale.passed and stale.examples == {"vectors_with_a_stale_payload": [ids[1], ids[2]]}
        vectors.delete(SPACE, np.array([ids[3]], dtype=np.int64))
        out_of_step = vector_store_sync(library.db, vectors)
    assert not out_of_step.passed and out_of_step.examples == {
        "faces_without_a_vector": [ids[3]],
        "vectors_with_a_stale_payload": [ids[1], ids[2]],
    }
    assert SPACE in out_of_step.description and f"1 face without a vector (e.g. face ids [{ids[3]}])" in (
        out_of_step.description
    )


def test_promotion_check_passes_on_raw_and_wants_evidence_for_a_projection(library: Library):
    raw = promotion_evidence(library.db)
    assert raw.passed and f"raw model's space {SPACE} is active" in raw.description
    promote(library, 25, promote=False)
    failing = promotion_evidence(library.db)
    assert not failing.passed and "projection_25" in failing.description
    with library.db.session() as session:
        session.execute(delete(EmbeddingSpaceRow).where(EmbeddingSpaceRow.name == "projection_25"))
    promote(library, 30, promote=True)
    assert promotion_evidence(library.db).passed


def test_a_blocking_check_stops_the_assets_downstream(library: Library):
    defs = definitions()

    label_people(library, 0, 1)
    with library.db.session() as session:
        face_id = session.scalars(select(FaceInstance.id).where(FaceInstance.user_confirmed.is_(True))).first()
        session.add(FaceAssignmentEvent(face_id=face_id, action="cluster", source="unsupervised"))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(CLUSTER_DUAL).execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failed = check_results(result)[("supervised_assignments", checks.USER_LABELS_KEPT)]
    assert not failed.passed and str(face_id) in str(failed.metadata["confirmed_faces_changed_by_an_automatic_run_ids"])
    assert result.asset_materializations_for_node("supervised_assignments")
    assert not result.asset_materializations_for_node("unknown_clusters")  # never ran


# --- the CLI's clustering commands launch the cluster_dual job -----------------------------------------


def test_cluster_commands_run_the_cluster_dual_job_whole_or_in_part(
    library: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from typer.testing import CliRunner

    from face_pipeline.cli import app

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    label_people(library, 0, 2)
    runner = CliRunner()
    for command in (["cluster-dual"], ["cluster", "--unknown-method", "agglomerative"], ["assign"]):
        result = runner.invoke(app, ["faces", *command])
        assert result.exit_code == 0, result.output
    assert "assigned:" in result.output and "unknown:" not in result.output  # assign: no clustering

    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        runs = list(reversed(instance.get_runs()))  # oldest first
        steps = [sorted(s.step_key for s in instance.get_run_step_stats(run.run_id)) for run in runs]
    assert [run.job_name for run in runs] == [CLUSTER_DUAL] * 3
    assert all(run.tags[VECTOR_STORE_TAG] == "write" and run.tags["launched_by"] == "face-pipeline CLI" for run in runs)
    regenerate = [
        "regenerated_embeddings",
        "regenerated_embeddings_promoted_space_beats_raw",
        "regenerated_embeddings_vectors_match_sql",
    ]
    assign = ["person_centroids", "supervised_assignments", "supervised_assignments_assignment_checks"]
    cluster = ["unknown_clusters", "unknown_clusters_assignment_checks"]
    assert steps == [sorted(regenerate + assign + cluster), sorted(regenerate + cluster), sorted(regenerate + assign)]
