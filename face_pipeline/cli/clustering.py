"""faces cluster-dual, reassign, cluster, assign: the Dagster job cluster_dual, whole or in part."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from face_pipeline.cli.common import (
    faces,
    friendly,
    settings_from_env,
)
from face_pipeline.errors import InvalidInput

# Parts of the cluster_dual job (defs/jobs.py). Each starts with regenerated_embeddings: faces new since the
# last run are projected first, so clustering never meets an active trained space missing some faces (a
# no-op while the raw space is active).
UNSUPERVISED_ONLY = ["regenerated_embeddings", "unknown_clusters"]
SUPERVISED_ONLY = ["regenerated_embeddings", "person_centroids", "supervised_assignments"]
Method = Annotated[str | None, typer.Option("--unknown-method", help="hdbscan | agglomerative | dbscan.")]
Full = Annotated[
    bool,
    typer.Option(
        "--full",
        help="Match and group every face again, even where a run over the new faces only would do (FACE_CLUSTER_MODE).",
    ),
]
Threshold = Annotated[
    float | None, typer.Option("--person-threshold", min=-1.0, max=1.0, help="Cosine; default: the space's own.")
]


def _check_method(method: str | None) -> None:
    from face_pipeline.domain.clustering import METHODS

    if method is not None and method not in METHODS:
        raise InvalidInput(f"--unknown-method must be one of {', '.join(METHODS)}, got {method!r}")


def _run_clustering(run_config: dict[str, Any], assets: list[str] | None = None) -> None:
    """The cluster_dual job; `assets`: only these of its assets."""
    from face_pipeline.defs.jobs import CLUSTER_DUAL
    from face_pipeline.defs.runner import asset_metadata, run_job

    result = run_job(settings_from_env(), CLUSTER_DUAL, {"ops": run_config}, assets=assets)
    ran = {event.asset_key.to_user_string() for event in result.get_asset_materialization_events() if event.asset_key}
    if "regenerated_embeddings" in ran:
        typer.echo(f"embeddings: {asset_metadata(result, 'regenerated_embeddings').get('message')}")
    if "supervised_assignments" in ran:
        m = asset_metadata(result, "supervised_assignments")
        typer.echo(
            f"assigned: {m.get('assigned', 0)} of {m.get('candidates', 0)} faces to known people "
            f"(threshold {m.get('person_threshold')}, margin {m.get('person_margin')}, space {m.get('space')}) "
            f"- {m.get('reason') or m.get('mode')}"
        )
    if "unknown_clusters" in ran:
        m = asset_metadata(result, "unknown_clusters")
        typer.echo(
            f"unknown: {m.get('clusters', 0)} clusters holding {m.get('clustered_faces', 0)} faces, "
            f"{m.get('noise', 0)} singletons ({m.get('method')}, {m.get('seconds')} s) - "
            f"{m.get('reason') or m.get('mode')}"
        )
    typer.echo(f"run {result.run_id}")


@faces.command("cluster-dual")
@friendly
def cluster_dual(
    person_threshold: Threshold = None,
    unknown_method: Method = None,
    min_cluster_size: Annotated[int | None, typer.Option(min=2)] = None,
    eps: Annotated[float | None, typer.Option(min=0.0, max=2.0, help="Cosine distance linking faces.")] = None,
    full: Full = False,
) -> None:
    """Dual-mode clustering: match faces to known people, then group the rest.

    Under the link rule (the ArcFace spaces' default) a run after the first touches only the new faces and
    their neighbours when that gives what a full run would; --full (or FACE_CLUSTER_MODE=full) does
    everything again. The output says which ran and why."""
    _check_method(unknown_method)
    _run_clustering(
        {
            "supervised_assignments": {"config": {"person_threshold": person_threshold, "full": full}},
            "unknown_clusters": {
                "config": {"method": unknown_method, "min_cluster_size": min_cluster_size, "eps": eps, "full": full}
            },
        },
    )


@faces.command("reassign")
@friendly
def reassign(
    person_threshold: Threshold = None,
    use_trained_model: Annotated[
        bool,
        typer.Option(
            "--use-trained-model",
            help="Switch to FACE_MODEL_CHECKPOINT or the newest promoted checkpoint, and let automatic runs "
            "activate checkpoints promoted later and use the learned matcher (FACE_LEARNED_MATCHING) where its "
            "gate lets it in. Without it: the raw space and raw matching, pinned.",
        ),
    ] = False,
) -> None:
    """Choose the space (raw, or with --use-trained-model the trained one), then cluster-dual in it.

    Without --use-trained-model: the raw model's space becomes active (a trained space that was active is
    retired) and stays pinned: automatic runs (daily, and retrain runs started by the label-growth sensor or
    the monthly schedule) do not activate new checkpoints until the next `faces reassign`. With it: the
    checkpoint FACE_MODEL_CHECKPOINT names, else the newest promoted one, becomes active (if there is none,
    the raw space stays and the message says why) and the pin is lifted: a checkpoint a later retrain
    promotes is activated by that run. FACE_MODEL_CHECKPOINT set pins that checkpoint: automatic runs never
    switch. With FACE_LEARNED_MATCHING on, the raw pin also means raw matching (prototype cosines): the
    learned matcher is used again after `faces reassign --use-trained-model`. --person-threshold matches raw
    (a cosine). Faces a user confirmed are never changed.
    """
    _run_clustering(
        {
            "regenerated_embeddings": {"config": {"mode": "trained" if use_trained_model else "raw"}},
            "supervised_assignments": {"config": {"person_threshold": person_threshold, "full": True}},
        }
    )


@faces.command("cluster")
@friendly
def cluster_only(
    unknown_method: Method = None,
    min_cluster_size: Annotated[int | None, typer.Option(min=2)] = None,
    eps: Annotated[float | None, typer.Option(min=0.0, max=2.0)] = None,
    full: Full = False,
) -> None:
    """Group the faces nobody is named on, without matching known people."""
    _check_method(unknown_method)
    config = {"method": unknown_method, "min_cluster_size": min_cluster_size, "eps": eps, "full": full}
    _run_clustering({"unknown_clusters": {"config": config}}, UNSUPERVISED_ONLY)


@faces.command("assign")
@friendly
def assign_only(person_threshold: Threshold = None) -> None:
    """Supervised only: match faces to the known people's prototypes."""
    _run_clustering({"supervised_assignments": {"config": {"person_threshold": person_threshold}}}, SUPERVISED_ONLY)
