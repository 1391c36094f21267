"""A user's decisions from the command line: label (one cluster, or many rows from a CSV file), reject (one or
many faces), merge, rename, import, export."""

from __future__ import annotations

import csv
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer

from face_pipeline.cli.common import (
    faces,
    friendly,
    open_library,
)
from face_pipeline.domain.naming import person_cluster_id
from face_pipeline.errors import InvalidInput

if TYPE_CHECKING:
    from face_pipeline.services.label_batches import LabelRow


@faces.command("label")
@friendly
def label(
    cluster_id: Annotated[str | None, typer.Argument(help="The cluster to name (with NAME).")] = None,
    name: Annotated[str | None, typer.Argument(help="The person's name.")] = None,
    from_csv: Annotated[
        Path | None,
        typer.Option(
            "--from-csv",
            help="Name many at once: a CSV file of `target,name` rows, target a cluster id (as `faces stats` lists "
            "it) or a face id (42); an optional header `cluster_id,name` or `face_id,name`; blank lines and # comments "
            "are skipped. One transaction: a bad row names its line and changes nothing.",
        ),
    ] = None,
) -> None:
    """Name every face of a cluster (creates or reuses the person); or many clusters and faces with --from-csv."""
    if from_csv is not None:
        if cluster_id is not None or name is not None:
            raise InvalidInput("give either CLUSTER_ID NAME or --from-csv FILE, not both")
        _label_from_csv(from_csv)
        return
    if cluster_id is None or name is None:
        raise InvalidInput("give CLUSTER_ID and NAME (or --from-csv FILE)")
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


_HEADER_TARGETS = ("cluster_id", "face_id", "cluster", "face", "target", "id")


def read_label_csv(path: Path) -> list[LabelRow]:
    """The rows of a `target,name` CSV file; InvalidInput naming the file and line of the first bad row."""
    from face_pipeline.services.label_batches import LabelRow

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    rows: list[LabelRow] = []
    for number, cells in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [cell.strip() for cell in cells]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if not rows and cells[0].lower() in _HEADER_TARGETS and len(cells) == 2 and cells[1].lower() == "name":
            continue  # the header
        if len(cells) != 2 or not cells[0] or not cells[1]:
            raise InvalidInput(f"{path} line {number}: expected `cluster_id or face_id,name`, got {','.join(cells)!r}")
        target, person = cells
        if target.isdigit():
            rows.append(LabelRow(line=number, name=person, face_id=int(target)))
        else:
            rows.append(LabelRow(line=number, name=person, cluster_id=target))
    if not rows:
        raise InvalidInput(f"{path} holds no rows (expected `cluster_id or face_id,name` lines)")
    return rows


def _label_from_csv(path: Path) -> None:
    from face_pipeline.errors import NotFound
    from face_pipeline.services.label_batches import label_rows

    rows = read_label_csv(path)
    try:
        with open_library() as library:
            result = label_rows(library, rows)
    except (InvalidInput, NotFound) as exc:
        raise InvalidInput(f"{path} {exc}; nothing was changed") from None
    skipped = ""
    if result.skipped_confirmed or result.skipped_rejected:
        skipped = (
            f"; left {len(result.skipped_confirmed)} confirmed as someone else and "
            f"{len(result.skipped_rejected)} you ruled out"
        )
    people = len(result.people)
    typer.echo(
        f"{path}: {result.rows} {'row' if result.rows == 1 else 'rows'}, {result.faces_labelled} "
        f"{'face' if result.faces_labelled == 1 else 'faces'} named for {people} "
        f"{'person' if people == 1 else 'people'} ({result.people_created} new){skipped}"
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
    face_ids: Annotated[list[int], typer.Argument(help="One or more face ids.", metavar="FACE_ID...")],
    person: Annotated[
        str | None, typer.Option(help="The person they are not (default: each one's current one).")
    ] = None,
) -> None:
    """Not this person: the faces leave the person and are never assigned to them again (one transaction)."""
    from face_pipeline.services.label_batches import reject_faces

    with open_library() as library:
        rejections = reject_faces(library, face_ids, person)
    for done in rejections[:_LIST_AT_MOST]:
        typer.echo(f"face {done.face_id} is not {done.person_name!r} ({person_cluster_id(done.person_id)})")
    if len(rejections) > _LIST_AT_MOST:
        typer.echo(f"... and {len(rejections) - _LIST_AT_MOST} more faces ({len(rejections)} in all)")


_LIST_AT_MOST = 20


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
