"""faces doctor: check that SQL and the vector store agree (and the cluster and decision invariants hold);
--repair fixes the drift from SQL, the source of truth (services/doctor.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from face_pipeline.cli.common import faces, friendly, open_library


@faces.command("doctor")
@friendly
def doctor(
    repair: Annotated[bool, typer.Option("--repair", help="Fix the drift found (SQL is the source of truth).")] = False,
) -> None:
    """Find drift between SQL and the vector store (vectors without a face, faces without a vector, stale
    payloads) and broken invariants; exit 1 while any remain."""
    from face_pipeline.services.doctor import diagnose

    with open_library() as library, library.vectors() as vectors:
        report = diagnose(library, vectors, repair=repair)
        if repair and report.repairs:
            after = diagnose(library, vectors)
            after.repairs = report.repairs
            report = after
    for line in report.lines():
        typer.echo(line)
    if not report.healthy:
        if not repair:
            typer.echo("run `faces doctor --repair` to fix it from SQL", err=True)
        raise typer.Exit(code=1)
