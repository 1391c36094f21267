"""Dagster: definitions load, and both ingest assets materialise in a temporary DAGSTER_HOME; one resource
(the vector store) swapped without the others."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from face_pipeline.definitions import defs as definitions
from face_pipeline.defs.ingest_assets import detected_faces, photo_catalog
from face_pipeline.defs.resources import SettingsResource, VectorStoreResource, pipeline_resources
from face_pipeline.settings import SettingsError
from face_pipeline.storage.vectors import VectorStore
from face_pipeline_tests.photo_corpus import copy_people

STORE_EVENTS: list[str] = []  # Dagster copies resources when it initialises them: record outside


class RecordingVectorStore(VectorStoreResource):
    """The real store, recording when a step opens and closes it."""

    @contextmanager
    def open(self) -> Iterator[VectorStore]:
        STORE_EVENTS.append("open")
        with super().open() as store:
            yield store
        STORE_EVENTS.append("closed")


def test_definitions_load():
    defs = definitions()

    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("ingest") is not None
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"photo_catalog", "detected_faces"} <= keys


def test_importing_the_definitions_reads_no_settings(monkeypatch: pytest.MonkeyPatch):
    import face_pipeline.definitions as module

    monkeypatch.setenv("FACE_SCHEDULE_HOUR", "24")  # not an hour: reading the settings fails
    reloaded = importlib.reload(module)  # importing reads nothing
    with pytest.raises(SettingsError, match="FACE_SCHEDULE_HOUR"):
        reloaded.defs()  # Dagster calls it when it loads the code location


def test_materialize_catalog_and_detection(tmp_path: Path, lfw_mini: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FACE_MODEL_DIR", str(tmp_path / "insightface"))  # no buffalo_l: auto picks buffalo_s
    monkeypatch.delenv("FACE_EMBEDDER", raising=False)
    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos, people=2, photos_each=3)
    resources = pipeline_resources(SettingsResource(photos_dir=str(photos), data_dir=str(tmp_path / "data")))
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        result = dg.materialize(
            [photo_catalog, detected_faces],
            instance=instance,
            resources=resources,
            run_config={"ops": {"detected_faces": {"config": {"limit": 4}}}},
        )
        assert result.success
        catalog = result.asset_materializations_for_node("photo_catalog")[0].metadata
        detected = result.asset_materializations_for_node("detected_faces")[0].metadata
        assert catalog["new"].value == 6
        assert detected["photos"].value == 4 and detected["faces"].value >= 4
        assert detected["space"].value == detected["model_space"].value == "insightface_buffalo_s"
        assert (detected["model_model"].value, detected["model_backend"].value) == ("buffalo_s", "insightface")
        assert "CPUExecutionProvider" in detected["model_providers"].value
        assert "non-commercial" in detected["model_licence"].value

        swapped = {**resources, "vector_store": RecordingVectorStore(settings=resources["settings"])}
        STORE_EVENTS.clear()
        again = dg.materialize([photo_catalog, detected_faces], instance=instance, resources=swapped)
        assert STORE_EVENTS == ["open", "closed"]  # the swapped store, held only while detection wrote to it
        detected = again.asset_materializations_for_node("detected_faces")[0].metadata
        assert detected["photos"].value == 2  # only what the limit left pending
        runs = instance.get_runs()
        assert len(runs) == 2
