"""The Celery app workers run (`celery -A face_pipeline.defs.celery_worker worker ...`; see
defs/celery_executor.py): dagster-celery's step task, with the broker and settings from FACE_*.

Importing this module reads the settings and builds the app: only a worker imports it."""

from __future__ import annotations

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from face_pipeline.defs.celery_executor import celery_settings
from face_pipeline.settings import load_settings

_settings = load_settings()
app = make_app(
    {
        "broker": _settings.celery_broker,
        "backend": _settings.celery_backend,
        "config_source": celery_settings(_settings),
    }
)
execute_plan = create_task(app, acks_late=True, reject_on_worker_lost=True)
