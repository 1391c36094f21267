"""A user's decisions from the command line: label, reject, merge, rename, import, export."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, cast

import typer

from face_pipeline.cli.common import (
    faces,
    friendly,
    open_library,
)
from face_pipeline.domain.naming import person_cluster_id


@faces.command("label")
@friendly
def label(cluster_id: str, name: str) -> None:
    """Name every face of a cluster (creates or reuses the person)."""
    from face_pipeline.services.labels import label_cluster

    with open_library() as library:
        result = label_cluster(library, cluster_id, name)
    extra = ""
    if result.skipped_confirmed or result.skipped_rejected:
        extra = (
            f" (left {len(result.skipped_confirmed)} confirmed as someone else and "
            f"{len(result.skipped_rejected)} you ruled out)"
        )
    created = "new person" if result.created_person else "existing person"
    typer.echo(
        f"{cluster_id}: {result.faces_labelled} faces named {result.person_name!r} ({created} "
        f"{person_cluster_id(result.person_id)}){extra}"
    )


@faces.command("label-face")
@friendly
def label_face_command(face_id: int, name: str) -> None:
    """Name one face."""
    from face_pipeline.services.labels import label_face

    with open_library() as library:
        result = label_face(library, face_id, name)
    typer.echo(f"face {face_id} named {result.person_name!r} ({person_cluster_id(result.person_id)})")


@faces.command("reject")
@friendly
def reject(
    face_id: int,
    person: Annotated[str | None, typer.Option(help="The person it is not (default: its current one).")] = None,
) -> None:
    """Not this person: the face leaves the person and is never assigned to them again."""
    from face_pipeline.services.browse import get_person
    from face_pipeline.services.labels import reject_face

    with open_library() as library:
        person_id = reject_face(library, face_id, person)
        name = get_person(library.db, person_id).name
    typer.echo(f"face {face_id} is not {name!r} ({person_cluster_id(person_id)})")


@faces.command("unassign")
@friendly
def unassign(face_id: int) -> None:
    """Undo a face's naming; it waits for the next clustering."""
    from face_pipeline.services.labels import unassign_face

    with open_library() as library:
        unassign_face(library, face_id)
    typer.echo(f"face {face_id} unassigned")


@faces.command("merge-persons")
@friendly
def merge_persons_command(source: str, target: str) -> None:
    """Merge person SOURCE into TARGET (ids or unique names)."""
    from face_pipeline.services.labels import merge_persons

    with open_library() as library:
        person, moved = merge_persons(library, source, target)
    typer.echo(f"merged into {person.name!r} ({person_cluster_id(person.id)}): {moved} faces moved")


@faces.command("rename-person")
@friendly
def rename_person_command(person: str, new_name: str) -> None:
    """Rename a person (id or unique name)."""
    from face_pipeline.services.labels import rename_person

    with open_library() as library:
        renamed = rename_person(library, person, new_name)
    typer.echo(f"{person_cluster_id(renamed.id)} is now {renamed.name!r}")


@faces.command("import-labels")
@friendly
def import_labels_command(directory: Path) -> None:
    """Name the faces of a folder-per-person tree (<person>/<photo>), matched to the library by content."""
    from face_pipeline.services.import_labels import import_labels

    with open_library() as library:
        report = import_labels(library, directory)
    typer.echo(
        f"{report.faces_labelled} faces named for {report.people} people ({report.people_created} new) from "
        f"{report.photos_seen} photos; {report.not_in_library} not in the library, {report.no_face} without a "
        f"face, {report.ambiguous} with several faces and no clear subject; left alone: "
        f"{report.already_confirmed} confirmed as someone else, {report.rejected} you ruled out for that person"
    )


class ExportFormat(StrEnum):
    csv = "csv"
    parquet = "parquet"


@faces.command("export")
@friendly
def export(
    fmt: Annotated[ExportFormat, typer.Option("--format", help="csv or parquet.")] = ExportFormat.csv,
    output: Annotated[
        Path | None, typer.Option(help="File to write (default: $FACE_DATA_DIR/exports/faces.<format>).")
    ] = None,
) -> None:
    """Every face with its person, cluster and source."""
    from face_pipeline.services.export import export_faces

    with open_library() as library:
        target = output or library.settings.exports_dir / f"faces.{fmt.value}"
        target.parent.mkdir(parents=True, exist_ok=True)
        count = export_faces(library.db, cast(Literal["csv", "parquet"], fmt.value), target)
    typer.echo(f"{count} {'face' if count == 1 else 'faces'} written to {target}")
