"""face_labels -> trained_projection_checkpoint -> regenerated_embeddings (<- detected_faces) -> person_centroids.

Learning from labels as assets: training writes a checkpoint and its embedding_spaces row (promoted or
rejected by the gate); regenerated_embeddings makes the right space active and keeps its collection in step
with SQL (services/space_switch.py says which space, when).
"""

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

from face_pipeline.defs.ingest_assets import detected_faces
from face_pipeline.defs.jobs import EMBEDDINGS_GROUP, TRAINING_GROUP
from face_pipeline.defs.metadata import _figure, _png, markdown_table
from face_pipeline.defs.resources import VECTOR_STORE_POOL, DatabaseResource, VectorStoreResource, library_of
from face_pipeline.services.doctor import diagnose
from face_pipeline.services.space_switch import regenerate_embeddings

if TYPE_CHECKING:
    from face_pipeline.services.training import TrainingReport

FACE_LABELS = dg.AssetKey("face_labels")  # the observed source asset (defs/labels_source.py)
GPU_POOL = "gpu"  # one training op at a time (dagster.yaml); it runs on the CPU when there is no GPU
DEVICE_TAG = "face_pipeline/device"


class TrainConfig(dg.Config):
    """Each unset field falls back to its FACE_* setting."""

    epochs: int | None = None  # FACE_TRAINING_EPOCHS
    margin: float | None = None  # FACE_TRIPLET_MARGIN
    learning_rate: float | None = None  # FACE_LEARNING_RATE
    batch_size: int | None = None  # FACE_BATCH_SIZE
    device: str | None = None  # auto | cpu | cuda; FACE_DEVICE


@dg.asset(
    deps=[FACE_LABELS],
    group_name=TRAINING_GROUP,
    pool=GPU_POOL,
    op_tags={DEVICE_TAG: "gpu"},
    kinds={"pytorch", "sql"},
)
def trained_projection_checkpoint(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    database: DatabaseResource,
    vector_store: VectorStoreResource,
) -> dg.MaterializeResult:
    """A projection head trained with triplet loss on the users' labels, judged against the raw space on
    held-out people: promoted (a candidate space) only when it beats it, kept as rejected with its figures
    otherwise. Fails with a clear message below 5 people x 5 labelled faces."""
    # Imported here: training loads torch, which the other assets (and the CLI's no-op runs) need not pay for.
    from face_pipeline.services.training import read_training_set, train_checkpoint, training_params

    library = library_of(database, vector_store)
    train = training_params(
        library.settings,
        epochs=config.epochs,
        margin=config.margin,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        device=config.device,
    )
    with library.vectors() as vectors:  # held only while reading: training needs no store
        data = read_training_set(library, vectors)
    report = train_checkpoint(library, data, train)
    context.log.info(f"{report.space}: {'promoted' if report.promote else 'rejected'}: {report.reason}")
    context.log.info(report.stopping())
    return dg.MaterializeResult(metadata=training_metadata(report))


def training_metadata(report: "TrainingReport") -> dict[str, Any]:
    figures = [[name, f"{raw:.4f}", f"{projected:.4f}"] for name, (raw, projected) in report.figures.items()]
    thresholds = [
        [name, getattr(report.raw_thresholds, key), getattr(report.thresholds, key)]
        for name, key in (("person threshold", "threshold"), ("margin", "margin"), ("cluster eps", "cluster_eps"))
    ]
    return {
        "space": report.space,
        "base_space": report.base_space,
        "status": report.status,
        "promote": report.promote,
        "reason": report.reason,
        "checkpoint": report.checkpoint,
        "label_count": report.label_count,
        "people": report.counts.get("people", 0),
        "train_faces": report.counts.get("train_faces", 0),
        "val_people": report.counts.get("val_people", 0),
        "epochs_run": report.epochs_run,
        "epochs_requested": report.epochs_requested,
        "best_epoch": report.best_epoch,
        "stopping": report.stopping(),
        "seconds": round(report.seconds, 3),
        "device": report.device,
        "person_threshold": report.thresholds.threshold,
        "person_margin": report.thresholds.margin,
        "cluster_eps": report.thresholds.cluster_eps,
        **{f"raw {name}": round(raw, 4) for name, (raw, _) in report.figures.items()},
        **{f"projected {name}": round(projected, 4) for name, (_, projected) in report.figures.items()},
        "figures": dg.MetadataValue.json(
            {
                name: {"raw": _finite(raw), "projected": _finite(projected)}
                for name, (raw, projected) in report.figures.items()
            }
        ),
        "validation": markdown_table(["held-out figure", "raw", "trained"], figures),
        "thresholds": markdown_table(["threshold", "raw space", "trained space"], thresholds),
        **{name: epoch_chart_md(CURVE_TITLES[name], *curve) for name, curve in epoch_curves(report).items()},
    }


CURVE_TITLES = {"loss_curve": "triplet loss", "validation_curve": "validation TAR@FAR"}


def epoch_curves(report: "TrainingReport") -> dict[str, tuple[list[int], list[float]]]:
    """(epochs, values) of each curve: the loss of epochs 1..n, the validation TAR of epochs 0..n (0: before
    training, the raw space's own figure through the untrained head)."""
    return {
        "loss_curve": (list(range(1, len(report.losses) + 1)), list(report.losses)),
        "validation_curve": (list(range(len(report.val_tar))), list(report.val_tar)),
    }


def epoch_chart_md(title: str, epochs: Sequence[int], values: Sequence[float]) -> dg.MetadataValue:
    """A line chart over epochs at their own numbers (defs/metadata.line_chart_md counts from 1)."""
    fig, ax = _figure()
    ax.plot(epochs, values, marker="o", markersize=3)
    ax.set_title(title)
    ax.set_xlabel("epoch (0 = untrained)" if epochs and epochs[0] == 0 else "epoch")
    if epochs:
        ax.set_xticks(list(epochs) if len(epochs) <= 20 else list(epochs)[:: max(1, len(epochs) // 10)])
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{_png(fig)})")


def _finite(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


class RegenerateConfig(dg.Config):
    """auto (automatic runs): activate a newly promoted checkpoint unless the user pinned a space, keep the
    active space otherwise; trained (`faces reassign --use-trained-model`): FACE_MODEL_CHECKPOINT or the newest
    promoted checkpoint, and lift the raw pin; raw (`faces reassign`): the raw model's space, pinned
    (services/space_switch.py)."""

    mode: str = "auto"  # auto | trained | raw (checked by the service)


@dg.asset(
    deps=[detected_faces, trained_projection_checkpoint],
    group_name=EMBEDDINGS_GROUP,
    pool=VECTOR_STORE_POOL,
    kinds={"pytorch", "qdrant", "sql"},
)
def regenerated_embeddings(
    context: dg.AssetExecutionContext,
    config: RegenerateConfig,
    database: DatabaseResource,
    vector_store: VectorStoreResource,
) -> dg.MaterializeResult:
    """Every face in the active embedding space: a promoted checkpoint's projection of all faces into a new
    collection, then an atomic switch; new faces projected and deleted ones removed while a projection is
    active; nothing at all while the raw space stays active."""
    library = library_of(database, vector_store)
    with library.vectors() as vectors:
        report = regenerate_embeddings(library, vectors, mode=config.mode)
        # Drift a crash left (vectors without a face, payloads a killed run never updated) is healed here,
        # before the vectors_match_sql check; faces without a vector need `faces doctor --repair`.
        healed = diagnose(library, vectors, repair=True, requeue=False).repairs
    for line in [report.message, *healed]:
        context.log.info(line)
    return dg.MaterializeResult(
        metadata={
            "mode": str(report.mode),
            "active_space": report.active_space or "",
            "previous_space": report.previous_space or "",
            "switched": report.switched,
            "projected": report.projected,
            "removed": report.removed,
            "unchanged": report.unchanged,
            "payloads_refreshed": report.payloads_refreshed,
            "dropped_collection": report.dropped_collection or "",
            "message": report.message,
            "healed": "; ".join(healed),
            "seconds": round(report.seconds, 3),
        }
    )
