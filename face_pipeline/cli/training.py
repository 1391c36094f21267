"""faces train-matching, faces reassign: learning from labels."""

from __future__ import annotations

from typing import Annotated

import typer

from face_pipeline.cli.clustering import CLUSTER_ASSETS, Threshold
from face_pipeline.cli.common import (
    faces,
    friendly,
    open_library,
    settings_from_env,
)


@faces.command("train-matching")
@friendly
def train_matching(
    epochs: Annotated[int | None, typer.Option(min=1, max=10_000, help="Default: FACE_TRAINING_EPOCHS.")] = None,
    margin: Annotated[float | None, typer.Option(min=0.0, max=2.0, help="Default: FACE_TRIPLET_MARGIN.")] = None,
    learning_rate: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Default: FACE_LEARNING_RATE.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda; default: FACE_DEVICE.")] = None,
) -> None:
    """Train a projection on the labelled faces (trained_projection_checkpoint); it is promoted only if it
    beats the raw space on held-out people. Use it with `faces reassign --use-trained-model`."""
    from face_pipeline.defs.runner import asset_metadata, materialize_assets
    from face_pipeline.services.training import require_enough_labels

    with open_library() as library:  # too few labels: one line before a run is even recorded (the asset checks again)
        require_enough_labels(library.db)
    config = {"epochs": epochs, "margin": margin, "learning_rate": learning_rate, "device": device}
    result = materialize_assets(
        settings_from_env(),
        ["trained_projection_checkpoint"],
        {"ops": {"trained_projection_checkpoint": {"config": config}}},
    )
    m = asset_metadata(result, "trained_projection_checkpoint")
    typer.echo(f"checkpoint {m.get('space')}: promote {'yes' if m.get('promote') else 'no'}")
    typer.echo(f"reason: {m.get('reason')}")
    typer.echo(f"{'held-out figure':26s} {'raw':>8s} {'projected':>10s}")
    for name, pair in (m.get("figures") or {}).items():
        typer.echo(f"{name:26s} {_figure(pair.get('raw')):>8s} {_figure(pair.get('projected')):>10s}")
    typer.echo(
        f"trained {m.get('epochs_run')} epochs (best {m.get('best_epoch')}) on {m.get('train_faces')} faces, "
        f"{m.get('val_people')} of {m.get('people')} people held out, in {m.get('seconds')} s on {m.get('device')}"
    )
    typer.echo(
        f"projected-space thresholds: person {m.get('person_threshold')}, margin {m.get('person_margin')}, "
        f"cluster eps {m.get('cluster_eps')}"
    )
    if m.get("promote"):
        typer.echo("next: faces reassign --use-trained-model (make faces-reassign-smart)")
    typer.echo(f"run {result.run_id}")


def _figure(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


@faces.command("reassign")
@friendly
def reassign(
    person_threshold: Threshold = None,
    use_trained_model: Annotated[
        bool, typer.Option("--use-trained-model", help="Switch to the newest promoted checkpoint first.")
    ] = False,
) -> None:
    """Regenerate embeddings, then rebuild prototypes, assign known people and cluster the rest.

    With --use-trained-model: the newest promoted checkpoint (or FACE_MODEL_CHECKPOINT) becomes the active
    space; if there is none, the raw space stays and the message says why. Without it: the raw model's
    space (a trained space that was active is retired; scheduled runs do not bring it back). Faces a user
    confirmed are never changed.
    """
    from face_pipeline.defs.runner import asset_metadata, materialize_assets

    mode = "trained" if use_trained_model else "raw"
    result = materialize_assets(
        settings_from_env(),
        ["regenerated_embeddings", *CLUSTER_ASSETS],
        {
            "ops": {
                "regenerated_embeddings": {"config": {"mode": mode}},
                "supervised_assignments": {"config": {"person_threshold": person_threshold}},
            }
        },
    )
    regenerated = asset_metadata(result, "regenerated_embeddings")
    assigned = asset_metadata(result, "supervised_assignments")
    clusters = asset_metadata(result, "unknown_clusters")
    typer.echo(f"embeddings: {regenerated.get('message')}")
    typer.echo(
        f"assigned: {assigned.get('assigned', 0)} of {assigned.get('candidates', 0)} faces to known people "
        f"(threshold {assigned.get('person_threshold')}, margin {assigned.get('person_margin')}, "
        f"space {assigned.get('space')})"
    )
    typer.echo(
        f"unknown: {clusters.get('clusters', 0)} clusters holding {clusters.get('clustered_faces', 0)} faces, "
        f"{clusters.get('noise', 0)} singletons"
    )
    typer.echo(f"run {result.run_id}")
