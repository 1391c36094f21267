"""Schedules: the daily backfill-and-cluster run and a monthly retrain, at FACE_SCHEDULE_HOUR in
FACE_SCHEDULE_TIMEZONE (the monthly one an hour later on the 1st, so it queues behind the daily run)."""

import dagster as dg

from face_pipeline.defs.jobs import DAILY, RETRAIN, detect_limit_config
from face_pipeline.defs.resources import DatabaseResource
from face_pipeline.defs.sensors import TRIGGER_TAG, retrain_in_flight, retrain_tags
from face_pipeline.services.label_growth import retrain_decision
from face_pipeline.settings import Settings


def daily_schedule(settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="daily_backfill_and_cluster_schedule",
        job_name=DAILY,
        cron_schedule=f"0 {settings.schedule_hour} * * *",
        execution_timezone=settings.schedule_timezone,
        run_config=detect_limit_config(settings.daily_limit),
        tags={TRIGGER_TAG: "daily schedule"},
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"New photos (at most FACE_DAILY_LIMIT={settings.daily_limit or 'all'}) in, then clustering.",
    )


def monthly_retrain_schedule(settings: Settings) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="monthly_retrain_schedule",
        job_name=RETRAIN,
        cron_schedule=f"0 {(settings.schedule_hour + 1) % 24} 1 * *",
        execution_timezone=settings.schedule_timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Retrain on the 1st of the month when there is any new label since the last checkpoint trained "
        "(promoted or rejected) or promoted: the label-growth sensor's rule without its growth thresholds.",
    )
    def _monthly(context: dg.ScheduleEvaluationContext, database: DatabaseResource) -> dg.RunRequest | dg.SkipReason:
        if busy := retrain_in_flight(context.instance):
            return busy
        # The sensor's rule (services/label_growth): once a month any label new since the last checkpoint trained
        # or promoted is enough (no growth threshold). No cursor: the checkpoints are the memory, so unchanged
        # labels are not trained on again, whatever the gate said last time.
        decision = retrain_decision(
            database.database,
            database.face_settings(),
            last_requested=None,
            min_new_labels=1,
            min_growth=0.0,
            thresholds="the monthly retrain's rule",
        )
        if not decision.retrain:
            return dg.SkipReason(decision.reason)
        when = context.scheduled_execution_time
        return dg.RunRequest(
            run_key=f"monthly-retrain-{when:%Y-%m}" if when else None,
            tags=retrain_tags(decision, "monthly schedule"),
        )

    return _monthly


def build_schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    return [daily_schedule(settings), monthly_retrain_schedule(settings)]
