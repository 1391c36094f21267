"""faces train-matching: learning from labels."""

from __future__ import annotations

from typing import Annotated

import typer

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
    beats the raw space on held-out people. The next automatic run (daily, retrain) activates a promoted
    checkpoint unless `faces reassign` pinned the raw space or FACE_MODEL_CHECKPOINT is set;
    `faces reassign --use-trained-model` activates it now."""
    from face_pipeline.defs.jobs import RETRAIN, TRAIN
    from face_pipeline.defs.runner import asset_metadata, run_job
    from face_pipeline.services.training import require_enough_labels

    with open_library() as library:  # too few labels: one line before a run is even recorded (the asset checks again)
        require_enough_labels(library.db)
    config = {"epochs": epochs, "margin": margin, "learning_rate": learning_rate, "device": device}
    # The retrain job's training step alone: the switch is the next automatic run's or `faces reassign`'s.
    result = run_job(settings_from_env(), RETRAIN, {"ops": {TRAIN: {"config": config}}}, assets=[TRAIN])
    m = asset_metadata(result, "trained_projection_checkpoint")
    typer.echo(f"checkpoint {m.get('space')}: promote {'yes' if m.get('promote') else 'no'}")
    typer.echo(f"reason: {m.get('reason')}")
    typer.echo(f"{m.get('stopping')}")
    typer.echo(f"{'held-out figure':26s} {'raw':>8s} {'trained':>8s}")
    for name, pair in (m.get("figures") or {}).items():
        typer.echo(f"{name:26s} {_figure(pair.get('raw')):>8s} {_figure(pair.get('projected')):>8s}")
    typer.echo(
        f"trained on {m.get('train_faces')} faces, {m.get('val_people')} of {m.get('people')} people held out, "
        f"in {m.get('seconds')} s on {m.get('device')}"
    )
    typer.echo(
        f"trained-space thresholds: person {m.get('person_threshold')}, margin {m.get('person_margin')}, "
        f"cluster eps {m.get('cluster_eps')}"
    )
    if m.get("promote"):
        typer.echo(
            "next: faces reassign --use-trained-model (make faces-reassign-smart) switches now; otherwise the next "
            "automatic run does, unless the raw space is pinned (`faces reassign`) or FACE_MODEL_CHECKPOINT is set"
        )
    typer.echo(f"run {result.run_id}")


def _figure(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
