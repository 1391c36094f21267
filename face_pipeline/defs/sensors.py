"""label_growth_sensor: ask for a `retrain` run once users have labelled enough new faces.

Skips (saying why) while a retrain is queued or running, when FACE_TRAINING_ENABLED is false, when there are
too few labels to train (5 people x 5 faces), and while the labels have not grown by
FACE_RETRAIN_MIN_NEW_LABELS and FACE_RETRAIN_MIN_GROWTH since the last promoted checkpoint, the last checkpoint
trained or the last request (services/label_growth.retrain_decision). Its cursor (JSON) keeps the label count at
the last request. The retrain run activates the checkpoint it trains when the gate promotes it, unless the user
pinned the raw space (`faces reassign`) or a checkpoint (FACE_MODEL_CHECKPOINT): services/space_switch.py.
"""

import json

import dagster as dg

from face_pipeline.defs.jobs import RETRAIN, runs_in_flight
from face_pipeline.defs.resources import DatabaseResource
from face_pipeline.defs.run_recovery import free_dead_runs
from face_pipeline.services.label_growth import TRAINING_DISABLED, RetrainDecision, retrain_decision

__all__ = [
    "LABEL_COUNT_TAG",
    "TRAINING_DISABLED",
    "TRIGGER_TAG",
    "dead_run_sensor",
    "label_growth_sensor",
    "read_cursor",
    "retrain_in_flight",
    "retrain_tags",
]
LABEL_COUNT_TAG = "face_pipeline/label_count"  # the labels a retrain run was asked for
TRIGGER_TAG = "face_pipeline/trigger"  # what started a run


def retrain_tags(decision: RetrainDecision, trigger: str) -> dict[str, str]:
    """The tags of a retrain run the sensor or the monthly schedule asks for."""
    return {LABEL_COUNT_TAG: str(decision.label_count), TRIGGER_TAG: trigger}


def read_cursor(cursor: str | None) -> int | None:
    """The label count at the last request, or None (no request yet, or an unreadable cursor)."""
    try:
        value = json.loads(cursor or "null")
        return int(value["label_count"]) if isinstance(value, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def retrain_in_flight(instance: dg.DagsterInstance) -> dg.SkipReason | None:
    runs = runs_in_flight(instance, RETRAIN)
    if not runs:
        return None
    return dg.SkipReason(f"retrain run {runs[0].run_id} is {runs[0].status.value.lower()}: not starting another")


@dg.sensor(
    name="label_growth_sensor",
    job_name=RETRAIN,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=__doc__,
)
def label_growth_sensor(
    context: dg.SensorEvaluationContext, database: DatabaseResource
) -> dg.SensorResult | dg.SkipReason:
    if busy := retrain_in_flight(context.instance):
        return busy
    settings = database.face_settings()
    decision = retrain_decision(
        database.database,
        settings,
        last_requested=read_cursor(context.cursor),
        min_new_labels=settings.retrain_min_new_labels,
        min_growth=settings.retrain_min_growth,
    )
    if not decision.retrain:
        return dg.SkipReason(decision.reason)
    context.log.info(decision.reason)
    request = dg.RunRequest(
        run_key=f"labels-{decision.baseline}-to-{decision.label_count}",
        tags=retrain_tags(decision, "label_growth_sensor"),
    )
    return dg.SensorResult(
        run_requests=[request],
        cursor=json.dumps({"label_count": decision.label_count}),
    )


@dg.sensor(
    name="dead_run_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed the runs whose process is gone (kill -9, out of memory) and frees their pool "
    "slots, so the next scheduled run does not wait for them forever (defs/run_recovery.py).",
)
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    freed = free_dead_runs(context.instance)
    for run in freed:
        context.log.warning(run.line())
    return dg.SkipReason(f"freed {len(freed)} dead run(s)" if freed else "no dead runs")
