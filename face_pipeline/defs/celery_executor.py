"""FACE_EXECUTOR=celery: every step a Celery task over the broker FACE_CELERY_BROKER (RabbitMQ).

The run's own process (launched by the daemon or the webserver) sends each step to the `dagster` queue;
workers started with

    celery -A face_pipeline.defs.celery_worker worker -Q dagster --concurrency 1 --prefetch-multiplier 1

(the same FACE_* and DAGSTER_PG_URL variables, the same code) run them. The training step goes to
FACE_CELERY_GPU_QUEUE when it is set (`-Q gpu` on the GPU machine's worker); every other step to `dagster`.

Tasks are acknowledged after they finish (acks_late) and given back when their worker process dies
(reject_on_worker_lost), so the broker hands a killed worker's step to another worker; when the broker
connection drops, running tasks are cancelled (their message is delivered again) rather than left running
beside a second delivery. The steps themselves are safe to run again (services/partitions.partition_lock).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from face_pipeline.settings import Settings

DEFAULT_QUEUE = "dagster"  # dagster-celery's queue name


def celery_settings(settings: Settings) -> dict[str, Any]:
    """Celery app settings shared by the run (which sends tasks) and the workers (which take them)."""
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.celery_queue,
        "task_default_priority": 5,
        # give up sending after a few quick tries: a run whose broker is gone fails instead of hanging
        "broker_transport_options": {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2},
    }


def executor_config(settings: Settings) -> dict[str, Any]:
    """The celery executor's config (what `execution: config:` would hold in run config)."""
    return {
        "broker": settings.celery_broker,
        "backend": settings.celery_backend,
        "config_source": celery_settings(settings),
        # Steps with a RetryPolicy are retried by the run, on whichever worker takes them.
        "retries": {"enabled": {}},
    }


def build_celery_executor(settings: Settings) -> dg.ExecutorDefinition:
    """dagster-celery's executor, configured from the settings; the training step routed to
    FACE_CELERY_GPU_QUEUE when set. Imports dagster_celery here: other executors never load Celery."""
    from dagster import multiple_process_executor_requirements
    from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task
    from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

    from face_pipeline.defs.training_assets import DEVICE_TAG

    gpu_queue = settings.celery_gpu_queue

    class RoutedCeleryExecutor(CeleryExecutor):
        """Sends steps tagged face_pipeline/device=gpu (training) to the GPU queue."""

        def execute(self, plan_context: Any, execution_plan: Any) -> Any:
            from dagster_celery.core_execution_loop import core_celery_execution_loop

            return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=self._submit)

        def _submit(self, app: Any, plan_context: Any, step: Any, queue: str, priority: int, state: Any) -> Any:
            if gpu_queue and step.tags.get(DEVICE_TAG) == "gpu" and DAGSTER_CELERY_QUEUE_TAG not in step.tags:
                plan_context.log.info(f"step {step.key} goes to the Celery queue {gpu_queue!r} (FACE_CELERY_GPU_QUEUE)")
                queue = gpu_queue
            return _submit_task(app, plan_context, step, queue, priority, state)

    @dg.executor(name="celery", config_schema=CELERY_CONFIG, requirements=multiple_process_executor_requirements())
    def face_celery_executor(init_context: dg.InitExecutorContext) -> CeleryExecutor:
        from dagster._core.execution.retries import RetryMode

        config = init_context.executor_config
        return RoutedCeleryExecutor(
            broker=config.get("broker"),
            backend=config.get("backend"),
            config_source=config.get("config_source"),
            include=config.get("include"),
            retries=RetryMode.from_config(config["retries"]),  # type: ignore[arg-type]
        )

    return face_celery_executor.configured(executor_config(settings))


def daily_job() -> dg.JobDefinition:
    """The daily job of the Definitions, for `dg.reconstructable(daily_job)`: a run started from Python
    (tests, benchmarks/scaleout.py) that Celery workers rebuild by importing this function."""
    from face_pipeline.definitions import defs
    from face_pipeline.defs.jobs import DAILY

    job: dg.JobDefinition = defs().resolve_job_def(DAILY)
    return job


def retrain_job() -> dg.JobDefinition:
    """The retrain job, reconstructable like `daily_job` (the GPU-queue routing test starts it)."""
    from face_pipeline.definitions import defs
    from face_pipeline.defs.jobs import RETRAIN

    job: dg.JobDefinition = defs().resolve_job_def(RETRAIN)
    return job
