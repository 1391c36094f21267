"""Run a named job (whole or some of its assets) in this process against the project's Dagster instance, so
runs started from the CLI appear in the UI's run history under the job's name, next to scheduled ones."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from face_pipeline.defs.jobs import INGEST, build_jobs
from face_pipeline.defs.run_recovery import process_tags, wait_for_pools
from face_pipeline.errors import UserFacingError
from face_pipeline.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_DAGSTER_YAML = PROJECT_ROOT / "dagster.yaml"  # SQLite storage under DAGSTER_HOME
POSTGRES_DAGSTER_YAML = PROJECT_ROOT / "dagster-postgres.yaml"  # PostgreSQL storage at $DAGSTER_PG_URL
POSTGRES_URL_ENV = "DAGSTER_PG_URL"
# First line of the instance file we copy; a file without it is the user's own and is left alone.
MARKER_PREFIX = "# copied by face_pipeline from "
COPIED_MARKER = MARKER_PREFIX + "{name}: replaced on start; delete this line to keep your edits\n"

log = logging.getLogger(__name__)


class RunFailed(UserFacingError, RuntimeError):
    """A Dagster run failed; the message is the failing step's own error."""


def instance_template() -> Path:
    """dagster-postgres.yaml when DAGSTER_PG_URL is set, else dagster.yaml (SQLite)."""
    return POSTGRES_DAGSTER_YAML if os.environ.get(POSTGRES_URL_ENV, "").strip() else PROJECT_DAGSTER_YAML


def dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME if set, else $FACE_DATA_DIR/dagster, holding the instance file that matches the
    environment (see `instance_template`). A dagster.yaml written by hand is never overwritten."""
    home = Path(os.environ.get("DAGSTER_HOME") or (settings.data_dir / "dagster")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    template, target = instance_template(), home / "dagster.yaml"
    if template.exists():
        wanted = COPIED_MARKER.format(name=template.name) + template.read_text()
        current = target.read_text() if target.exists() else None
        if current is None or (current.startswith(MARKER_PREFIX) and current != wanted):
            target.write_text(wanted)
        elif not current.startswith(MARKER_PREFIX) and template == POSTGRES_DAGSTER_YAML:
            log.warning("%s is your own (no face_pipeline marker line): %s is not applied", target, template.name)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


# INFO shows the assets' progress lines without Dagster's per-event DEBUG chatter.
CLI_LOGGING = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
CLI_TAGS = {"launched_by": "face-pipeline CLI"}


def _definitions() -> dg.Definitions:
    from face_pipeline.definitions import defs  # late: importing definitions loads every asset module

    return defs()


def resolve_job(settings: Settings, job_name: str) -> dg.JobDefinition:
    """The named job of the definitions. `faces backfill`'s ingest job, when its steps run in this process,
    comes from definitions of its own assets: the same job (same snapshot id, tags and executor; a test
    compares them), without importing every other asset module and the services behind them (clustering,
    re-embedding, training: ~0.7 s of a backfill that finds nothing to do)."""
    if job_name != INGEST or settings.executor != "in_process":
        return _definitions().resolve_job_def(job_name)
    from face_pipeline.defs.ingest_assets import INGEST_ASSETS
    from face_pipeline.defs.resources import pipeline_resources

    jobs = [job for job in build_jobs(daily_limit=settings.daily_limit) if job.name == INGEST]
    ingest = dg.Definitions(
        assets=INGEST_ASSETS, jobs=jobs, resources=pipeline_resources(), executor=dg.in_process_executor
    )
    return ingest.resolve_job_def(INGEST)


def run_job(
    settings: Settings,
    job_name: str,
    run_config: dict[str, Any] | None = None,
    *,
    assets: Sequence[str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run the named job (its run tags and asset checks with it) in this process; `assets`: only these of
    its assets (and their checks).

    First frees runs whose process died (saying so) and waits, saying for which run, while live runs hold a
    pool; the run is tagged with this process so a later command can tell if it dies."""
    job = resolve_job(settings, job_name)
    dagster_home(settings)
    with dg.DagsterInstance.get() as instance, _quiet_on_interrupt():
        wait_for_pools(instance, settings.run_wait_seconds, say=_say)
        result = job.execute_in_process(
            run_config={**CLI_LOGGING, **(run_config or {})},
            instance=instance,
            asset_selection=[dg.AssetKey(name) for name in assets] if assets is not None else None,
            raise_on_error=False,
            tags={**CLI_TAGS, **process_tags()},
        )
    if not result.success:
        if _interrupted(result):
            raise KeyboardInterrupt  # the CLI prints one line for it (cli/common.friendly)
        raise RunFailed(_failure_message(result))
    return result


INTERRUPT_MARKERS = ("DagsterExecutionInterruptedError", "KeyboardInterrupt")


class _NoInterruptTraces(logging.Filter):
    """Ctrl-C during a step makes Dagster log the interrupt's stack trace; the CLI says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(marker in text for marker in INTERRUPT_MARKERS)


@contextmanager
def _quiet_on_interrupt() -> Iterator[None]:
    """Dagster builds its console logger with logging.getLoggerClass() per run: give that class the filter."""
    base = logging.getLoggerClass()

    class FilteredLogger(base):  # type: ignore[valid-type,misc]
        def __init__(self, name: str, level: int | str = logging.NOTSET) -> None:
            super().__init__(name, level)
            self.addFilter(_NoInterruptTraces())

    logging.setLoggerClass(FilteredLogger)
    try:
        yield
    finally:
        logging.setLoggerClass(base)


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    for event in result.all_events:
        data = event.step_failure_data if event.is_step_failure else None
        if data is not None and data.error is not None:
            error: Any = data.error
            while error is not None:
                if error.cls_name in INTERRUPT_MARKERS:
                    return True
                error = error.cause or error.context
    return False


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _failed_checks(result: dg.ExecuteInProcessResult) -> list[str]:
    """'check_name: description' of every failed check of the run (the description names the ids)."""
    lines = []
    for event in result.all_events:
        evaluation = event.event_specific_data
        if isinstance(evaluation, dg.AssetCheckEvaluation) and not evaluation.passed:
            lines.append(f"{evaluation.check_name} failed: {evaluation.description or 'no description'}")
    return lines


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    if checks := _failed_checks(result):
        return "; ".join(checks) + " (run `faces doctor` to see and repair drift)"
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None:  # the user's exception sits at the bottom of Dagster's wrapping
                error = error.cause
            message = error.message.strip()
            if error.cls_name and f"{error.cls_name}: " in message:  # "pkg.mod.Error: text" -> "text"
                message = message.split(f"{error.cls_name}: ", 1)[1]
            return f"{event.step_key}: {message}"
    return f"run {result.run_id} failed"


def asset_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.to_user_string() == asset:
            return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    return {}
