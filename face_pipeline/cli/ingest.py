"""faces backfill, faces stats."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from face_pipeline.cli.common import (
    UserError,
    faces,
    friendly,
    settings_from_env,
)


@faces.command()
@friendly
def backfill(
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many new photos in this run.")] = None,
) -> None:
    """Scan FACE_PHOTOS_DIR and detect faces in new or changed photos (photo_catalog, detected_faces)."""
    from face_pipeline.defs.runner import asset_metadata, materialize_assets

    settings = settings_from_env()
    if not settings.photos_dir.is_dir():  # fail before a run is even recorded
        raise UserError(f"photos folder not found: {settings.photos_dir} (set FACE_PHOTOS_DIR)")
    result = materialize_assets(
        settings,
        ["photo_catalog", "detected_faces"],
        {"ops": {"detected_faces": {"config": {"limit": limit}}}},
    )
    catalog = asset_metadata(result, "photo_catalog")
    detected = asset_metadata(result, "detected_faces")
    typer.echo(
        f"catalog: {catalog.get('files_seen', 0)} files, {catalog.get('new', 0)} new, {catalog.get('changed', 0)} "
        f"changed, {catalog.get('moved', 0)} moved, {catalog.get('duplicates', 0)} duplicates, "
        f"{catalog.get('missing', 0)} missing"
    )
    typer.echo(
        f"detected: {detected.get('faces', 0)} faces in {detected.get('photos', 0)} photos, "
        f"{detected.get('skipped', 0)} skipped, {detected.get('photos_per_second', 0)} photos/s "
        f"(space {detected.get('space') or '-'}; run {result.run_id})"
    )


@faces.command()
@friendly
def stats(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Photos by status, faces, people and clusters by type."""
    from face_pipeline.services.context import PipelineContext
    from face_pipeline.services.stats import library_stats

    context = PipelineContext.from_settings(settings_from_env())
    try:
        result = library_stats(context.db)
    finally:
        context.close()
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2, default=str))
        return
    photos = ", ".join(f"{k} {v}" for k, v in sorted(result.photos_by_status.items())) or "none"
    typer.echo(f"photos: {photos}")
    typer.echo(f"faces: {result.faces} ({result.faces_confirmed} confirmed by a user)")
    typer.echo(f"people: {result.people}")
    clusters = ", ".join(f"{k} {v}" for k, v in sorted(result.clusters.items())) or "none yet"
    typer.echo(f"clusters: {clusters}")
    if result.active_space:
        typer.echo(
            f"active space: {result.active_space} (person threshold {result.person_threshold}, "
            f"margin {result.person_margin}, {result.active_space_kind})"
        )
    if result.face_model:
        model = result.face_model
        providers = ", ".join(model.get("providers") or []) or "unknown"
        typer.echo(
            f"face model: {model.get('model')} (space {model.get('space')}, {model.get('dim')}-d) on {providers}; "
            f"licence: {model.get('licence', 'unknown')}"
        )
    if result.last_training_space:
        verdict = f"promoted, {result.last_training_status}" if result.last_training_promoted else "rejected"
        typer.echo(
            f"last training: {result.last_training_space} ({verdict}, {result.last_training_label_count} labels, "
            f"{result.last_training_at:%Y-%m-%d %H:%M}): {result.last_training_reason}"
        )
    for name, count in result.people_counts:
        typer.echo(f"  {name}: {count} faces")
    if result.largest_unknown:
        typer.echo("largest unknown clusters: " + ", ".join(f"{c} ({n})" for c, n in result.largest_unknown))
    for path, reason in result.skip_reasons:
        typer.echo(f"skipped: {path}: {reason}")
