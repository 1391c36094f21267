"""The Dagster UI for real: `dagster dev` (webserver, daemon, code server) on a free port with a temporary
DAGSTER_HOME over 2 people x 3 photos of lfw-mini. The daily job is launched over GraphQL and waited for
(the daemon dequeues it; every step runs in its own process); then Debian's chromium, driven by Playwright,
opens the asset lineage, sees every asset and materialises photo_catalog from the page.

Screenshots and the daily run's step durations go to test-artifacts/. Without chromium this fails when
CI=true and skips elsewhere (see face_pipeline_tests/browser.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from face_pipeline.defs.jobs import DAILY
from face_pipeline.defs.runner import PROJECT_DAGSTER_YAML
from face_pipeline_tests.browser import ARTIFACTS, free_port, launched_chromium, require_chromium, screenshot
from face_pipeline_tests.conftest import REPO
from face_pipeline_tests.photo_corpus import copy_people

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

ASSETS = [
    "face_labels",
    "photo_catalog",
    "detected_faces",
    "trained_projection_checkpoint",
    "regenerated_embeddings",
    "person_centroids",
    "supervised_assignments",
    "unknown_clusters",
]
DONE = {"SUCCESS", "FAILURE", "CANCELED"}
STORE_STEPS = (
    "detected_faces",
    "regenerated_embeddings",
    "regenerated_embeddings_vectors_match_sql",
    "person_centroids",
    "supervised_assignments",
    "unknown_clusters",
)


@dataclass
class DagsterDev:
    url: str
    home: Path
    log: Path
    location: str = ""
    repository: str = ""
    env: dict[str, str] | None = None  # the library's settings, for CLI commands beside the UI

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]


WORKSPACE = """{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError {
  __typename ... on RepositoryLocation { repositories { name } } ... on PythonError { message } } } } } }"""
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""
RUN = """query($runId: ID!) { runOrError(runId: $runId) { ... on Run { status startTime endTime
  stepStats { stepKey status startTime endTime } } } }"""


def wait_for_code_location(dev: DagsterDev, process: subprocess.Popen[bytes], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"dagster dev exited:\n{dev.log.read_text()[-3000:]}"
        try:
            entries = dev.graphql(WORKSPACE)["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, KeyError, AssertionError):
            entries = []
        loaded = [e for e in entries if (e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation"]
        failed = [e for e in entries if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
        assert not failed, failed[0]["locationOrLoadError"]["message"]
        if loaded:
            dev.location = loaded[0]["name"]
            dev.repository = loaded[0]["locationOrLoadError"]["repositories"][0]["name"]
            return
        time.sleep(1)
    pytest.fail(f"the code location did not load in {timeout:.0f} s:\n{dev.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def dagster_dev(lfw_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    require_chromium()  # before minutes of setup
    root = tmp_path_factory.mktemp("dagster_ui")
    copy_people(lfw_mini, root / "photos", people=2, photos_each=3)
    home = root / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT_DAGSTER_YAML, home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FACE_PHOTOS_DIR": str(root / "photos"),
        "FACE_DATA_DIR": str(root / "data"),
        "FACE_EMBEDDER": "auto",  # the default: buffalo_s, as no buffalo_l is in FACE_MODEL_DIR
        "FACE_MODEL_DIR": str(root / "insightface"),
        "FACE_WORKERS": "1",
    }
    env.pop("DAGSTER_PG_URL", None)
    port = free_port()
    dev = DagsterDev(f"http://127.0.0.1:{port}", home, root / "dagster-dev.log", env=env)
    with dev.log.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the webserver, daemon and code servers end with it
        )
    try:
        wait_for_code_location(dev, process)
        yield dev
    finally:
        process.send_signal(signal.SIGINT)  # dagster dev stops its children on Ctrl-C
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of this group is left
        process.wait(timeout=30)


def skip_community_dialog(page: Any) -> None:
    """Dismiss the first-visit "Join the Dagster community" dialog of a fresh browser, if it shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    skip = page.get_by_role("button", name="Skip")
    with contextlib.suppress(PlaywrightTimeout):  # no dialog this time
        skip.wait_for(timeout=8_000)
        skip.click()


def wait_for_run(dev: DagsterDev, run_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = dev.graphql(RUN, runId=run_id)["runOrError"]
        if run["status"] in DONE:
            return run
        time.sleep(2)
    pytest.fail(f"run {run_id} not finished after {timeout:.0f} s:\n{dev.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def daily_run(dagster_dev: DagsterDev) -> tuple[str, dict[str, Any]]:
    """The daily job, launched over GraphQL as the UI's launchpad does, and waited for."""
    selector = {
        "repositoryLocationName": dagster_dev.location,
        "repositoryName": dagster_dev.repository,
        "jobName": DAILY,
    }
    launched = dagster_dev.graphql(LAUNCH, params={"selector": selector, "runConfigData": {}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    return run_id, wait_for_run(dagster_dev, run_id)


def test_daily_job_launched_over_graphql_runs_every_step_through_the_daemon(
    dagster_dev: DagsterDev, daily_run: tuple[str, dict[str, Any]]
):
    run_id, run = daily_run
    steps = {s["stepKey"]: s for s in run["stepStats"]}
    figures = {
        "run_seconds": round(run["endTime"] - run["startTime"], 1),
        "steps": {  # started: seconds after the run started (each step first starts its own process)
            key: {
                "status": s["status"],
                "started": round(s["startTime"] - run["startTime"], 1),
                "seconds": round(s["endTime"] - s["startTime"], 2),
            }
            for key, s in steps.items()
        },
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dagster-daily-run.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    assert run["status"] == "SUCCESS", f"{figures}\n{dagster_dev.log.read_text()[-3000:]}"
    assert {"photo_catalog", "detected_faces", "regenerated_embeddings", "unknown_clusters"} <= set(steps)
    assert all(s["status"] == "SUCCESS" for s in steps.values()), figures
    # The steps that open the embedded vector store ran one after another (pool face_vector_store, limit 1).
    store_steps = sorted((steps[key] for key in STORE_STEPS if key in steps), key=lambda s: s["startTime"])
    assert len(store_steps) == len(STORE_STEPS)
    for before, after in zip(store_steps, store_steps[1:], strict=False):
        assert after["startTime"] >= before["endTime"], (before, after)

    with dg.DagsterInstance.from_config(str(dagster_dev.home)) as instance:
        evaluations = [
            e.get_dagster_event().event_specific_data
            for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        ]
        assert len(evaluations) == 6 and all(e.passed for e in evaluations)  # type: ignore[union-attr]
        latest = instance.get_latest_materialization_event(dg.AssetKey("detected_faces"))
        assert latest is not None and latest.run_id == run_id
        metadata = latest.asset_materialization.metadata  # type: ignore[union-attr]
        assert metadata["photos"].value == 6 and metadata["model_backend"].value == "insightface"
        assert metadata["model_space"].value == "insightface_buffalo_s"


def test_the_asset_lineage_in_a_browser_shows_every_asset_and_materialises_one(
    dagster_dev: DagsterDev, daily_run: tuple[str, dict[str, Any]]
):
    with launched_chromium() as browser:
        page = browser.new_page(viewport={"width": 2400, "height": 1300})  # wide: nodes drawn with full names
        page.set_default_timeout(60_000)
        page.goto(f"{dagster_dev.url}/asset-groups")
        skip_community_dialog(page)
        page.get_by_text("labels", exact=True).first.wait_for()
        page.keyboard.press("Alt+e")  # the graph's "Expand all groups"
        for name in ASSETS:
            page.get_by_text(name, exact=True).first.wait_for()
        screenshot(page, "dagster-01-asset-lineage.png")

        page.get_by_text("photo_catalog", exact=True).first.click()
        page.get_by_role("button", name="Materialize selected").click()
        toast = page.get_by_text("Launched run")
        toast.wait_for()
        screenshot(page, "dagster-02-materialize-launched.png")
        run_link = page.get_by_role("link", name="View", exact=True).get_attribute("href") or ""
        assert run_link.startswith("/runs/"), run_link
        page.goto(f"{dagster_dev.url}{run_link}")  # the run's page, as the toast's View link opens it
        page.get_by_text("RUN_SUCCESS", exact=True).first.wait_for(timeout=300_000)
        screenshot(page, "dagster-03-run-succeeded.png")
        run_id = run_link.removeprefix("/runs/").split("?", 1)[0]

        page.goto(f"{dagster_dev.url}/assets/unknown_clusters")
        page.get_by_text("cluster_sizes", exact=True).first.wait_for()
        screenshot(page, "dagster-04-unknown-clusters.png", full_page=True)
        page.goto(f"{dagster_dev.url}/automation")
        page.get_by_text("label_growth_sensor", exact=True).first.wait_for()
        page.wait_for_timeout(3_000)  # each row's status and next tick load after the names
        screenshot(page, "dagster-05-automation.png")

    run = dagster_dev.graphql(RUN, runId=run_id)["runOrError"]
    assert run["status"] == "SUCCESS" and [s["stepKey"] for s in run["stepStats"]] == ["photo_catalog"]


def _labels_version(home: Path) -> str | None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_observations(dg.AssetKey("face_labels"), limit=1).records
    if not records or records[0].asset_observation is None:
        return None
    return records[0].asset_observation.tags.get("dagster/data_version")


def test_cli_runs_are_named_and_face_labels_is_observed_after_a_label(
    dagster_dev: DagsterDev, daily_run: tuple[str, dict[str, Any]]
):
    """Issue 14: runs the CLI starts show as their job, with what started them; a label given on the command
    line is observed by face_labels_observer (the daemon), so face_labels is not "never observed"."""
    assert dagster_dev.env is not None
    cli = [sys.executable, "-m", "face_pipeline.cli", "faces"]
    before = _labels_version(dagster_dev.home)
    exported = dagster_dev.home / "faces.csv"
    export = [*cli, "export", "--output", str(exported)]
    assert subprocess.run(export, env=dagster_dev.env, capture_output=True, timeout=120).returncode == 0
    face_id = exported.read_text().splitlines()[1].split(",")[0]
    for args in (["label-face", face_id, "Ada Observed"], ["cluster-dual"]):
        done = subprocess.run([*cli, *args], env=dagster_dev.env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr

    with dg.DagsterInstance.from_config(str(dagster_dev.home)) as instance:
        cli_runs = [r for r in instance.get_runs() if r.tags.get("launched_by") == "face-pipeline CLI"]
    assert [r.job_name for r in cli_runs] == ["cluster_dual"], [(r.job_name, r.tags) for r in cli_runs]
    deadline = time.monotonic() + 180  # the observer ticks every 30 s
    while (version := _labels_version(dagster_dev.home)) in (None, before) and time.monotonic() < deadline:
        time.sleep(3)
    assert version not in (None, before), "face_labels was not observed after the label"

    with launched_chromium() as browser:
        page = browser.new_page(viewport={"width": 1800, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{dagster_dev.url}/runs")
        skip_community_dialog(page)
        page.get_by_text("cluster_dual", exact=True).first.wait_for()
        page.get_by_text(DAILY, exact=True).first.wait_for()
        page.wait_for_timeout(2_000)
        screenshot(page, "dagster-06-named-runs.png")
        page.goto(f"{dagster_dev.url}/assets/face_labels")
        page.get_by_text("labelled_faces", exact=True).first.wait_for()
        screenshot(page, "dagster-07-face-labels-observed.png", full_page=True)
