"""faces backfill, faces stats, faces reembed."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from face_pipeline.cli.common import (
    faces,
    friendly,
    open_library,
    settings_from_env,
)
from face_pipeline.errors import InvalidInput

# The scan's figures shown only when non-zero (services/catalog.py ScanReport), with what each means.
_SCAN_EXTRAS = (
    ("metadata_only", "with new bytes but the same pixels (faces and names kept)"),
    ("unreadable", "unreadable (tried again next scan)"),
    ("retried", "readable again"),
    ("unusable", "other paths unusable (`faces stats` lists them)"),
)


@faces.command()
@friendly
def backfill(
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many new photos in this run.")] = None,
) -> None:
    """Scan FACE_PHOTOS_DIR and detect faces in new or changed photos (photo_catalog, detected_faces)."""
    from face_pipeline.defs.jobs import INGEST
    from face_pipeline.defs.runner import asset_metadata, run_job

    settings = settings_from_env()
    if not settings.photos_dir.is_dir():  # fail before a run is even recorded
        raise InvalidInput(f"photos folder not found: {settings.photos_dir} (set FACE_PHOTOS_DIR)")
    result = run_job(settings, INGEST, {"ops": {"detected_faces": {"config": {"limit": limit}}}})
    catalog = asset_metadata(result, "photo_catalog")
    detected = asset_metadata(result, "detected_faces")
    extras = "".join(f", {catalog[key]} {words}" for key, words in _SCAN_EXTRAS if catalog.get(key))
    typer.echo(
        f"catalog: {catalog.get('files_seen', 0)} files, {catalog.get('new', 0)} new, {catalog.get('changed', 0)} "
        f"changed, {catalog.get('moved', 0)} moved, {catalog.get('duplicates', 0)} duplicates, "
        f"{catalog.get('missing', 0)} missing{extras}"
    )
    typer.echo(
        f"detected: {detected.get('faces', 0)} faces in {detected.get('photos', 0)} photos, "
        f"{detected.get('skipped', 0)} skipped, {detected.get('photos_per_second', 0)} photos/s "
        f"(space {detected.get('space') or '-'}; run {result.run_id})"
    )
    if not catalog.get("files_seen"):
        from face_pipeline.services.library_walk import PHOTO_EXTENSIONS

        kinds = ", ".join(sorted(PHOTO_EXTENSIONS))
        where = f"no photos under {settings.photos_dir} (looked for {kinds})"
        typer.echo(f"warning: {where}; is FACE_PHOTOS_DIR right?", err=True)


@faces.command()
@friendly
def stats(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Photos by status, faces, people and clusters by type."""
    from face_pipeline.services.stats import library_stats

    with open_library() as library:
        result = library_stats(library.db)
        learned_on = library.settings.learned_matching
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
    verdict_of = result.learned_matcher
    if learned_on or verdict_of:
        state = f"on ({verdict_of.get('kind') or 'not judged yet'})" if learned_on else "off (FACE_LEARNED_MATCHING)"
        judged = f" judged {verdict_of['at']}: {verdict_of['reason']}" if verdict_of else ""
        typer.echo(f"learned matching: {state};{judged}" if judged else f"learned matching: {state}")
    for name, count in result.people_counts:
        typer.echo(f"  {name}: {count} faces")
    if result.largest_unknown:
        typer.echo("largest unknown clusters: " + ", ".join(f"{c} ({n})" for c, n in result.largest_unknown))
    for path, reason in result.skip_reasons:
        typer.echo(f"skipped: {path}: {reason}")


@faces.command()
@friendly
def reembed(
    model: Annotated[str, typer.Option(help="The face model to move to: buffalo_s, buffalo_l, dlib or insightface.")],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Stage at most this many photos now; the switch waits for a later run.")
    ] = None,
) -> None:
    """Move the library to another face model (staged_faces, reembedded_faces).

    Every photo is detected and embedded again into a staging area while the old model keeps serving; an
    interrupted run resumes. Then, in one step, each face the new model finds again keeps its id, name and
    "not this person" rejections; decisions on faces it does not find are listed (and saved as a CSV).
    Automatic groupings are reset: run `faces cluster-dual` afterwards (this command does not run it).
    """
    from face_pipeline.defs.jobs import REEMBED
    from face_pipeline.defs.runner import asset_metadata, run_job
    from face_pipeline.services.reembed import check_reembed

    settings = settings_from_env()
    with open_library() as library:  # a bad model or nothing to do: one line before a run is even recorded
        target = check_reembed(library, model)
    config = {"model": model, "limit": limit}
    selection = ["staged_faces"] if limit else ["staged_faces", "reembedded_faces"]
    ops = {name: {"config": config} for name in selection}
    result = run_job(settings, REEMBED, {"ops": ops}, assets=selection)
    if limit:
        typer.echo(f"{asset_metadata(result, 'staged_faces').get('message')} (run {result.run_id})")
        return
    _print_reembed(asset_metadata(result, "staged_faces"), asset_metadata(result, "reembedded_faces"))
    typer.echo(
        f"active space: {target}; next: faces cluster-dual (groups and names the faces in it; run {result.run_id})"
    )
    if settings.embedder not in ("auto", model.strip().lower()):
        typer.echo(
            f"note: FACE_EMBEDDER={settings.embedder} names another model: set it to auto before the next backfill"
        )


def _print_reembed(staging: dict[str, Any], m: dict[str, Any]) -> None:
    def both(key: str) -> float:  # the staging step's share plus what the switch step staged (new arrivals)
        return staging.get(key, 0) + m.get(key, 0)

    typer.echo(
        f"staged: {both('photos_staged'):.0f} photos ({both('faces_staged'):.0f} faces) in {both('seconds'):.1f} s; "
        f"photos not detected again: {m.get('photos_not_redone', 0)}"
    )
    typer.echo(
        f"faces: {m.get('faces_old', 0)} before, {m.get('faces_new', 0)} after: {m.get('matched', 0)} kept their id, "
        f"{m.get('added', 0)} new, {m.get('removed', 0)} removed; {m.get('automatic_cleared', 0)} automatic "
        "assignments reset"
    )
    lost = m.get("not_carried") or []
    typer.echo(
        f"user decisions: {m.get('decisions_carried', 0)} carried over, {m.get('decisions_not_carried', 0)} not "
        f"carried{':' if lost else ''}"
    )
    for d in lost[:50]:
        said = ", ".join(filter(None, [d["person_name"], *(f"not {n}" for n in d["not_this_person"])]))
        typer.echo(f"  face {d['face_id']} ({said}) in {d['photo']}: {d['reason']}")
    if int(m.get("decisions_not_carried") or 0) > 50:
        typer.echo(f"  ... {int(m['decisions_not_carried']) - 50} more")
    typer.echo(f"list: {m.get('csv_path')}")
