"""The CLI's shared parts: the Typer apps, settings, and one-line errors for mistakes a user can fix.

Commands parse their input, call one service (through Dagster for pipeline steps) and report.
Errors a user can fix print one line and exit non-zero.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from face_pipeline.services.library import Library

from face_pipeline.errors import UserFacingError
from face_pipeline.settings import Settings, load_settings

app = typer.Typer(
    help="Find, group and name the people in a photo library.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
faces = typer.Typer(help="Face pipeline commands (backfill, stats, ...).", no_args_is_help=True)
app.add_typer(faces, name="faces")

F = TypeVar("F", bound=Callable[..., Any])
INTERRUPTED = "interrupted: work already committed is kept; run the command again to finish"


# Commands raise the generic "bad input" error; the name stays for the commands that use it.


def friendly(command: F) -> F:
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserFacingError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None
        except BaseException as exc:
            # Ctrl-C, also as Dagster's own interrupt error (not imported: everyday commands load no Dagster).
            if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "DagsterExecutionInterruptedError":
                typer.echo(INTERRUPTED, err=True)
                raise typer.Exit(code=130) from None
            raise

    return wrapper  # type: ignore[return-value]


def settings_from_env() -> Settings:
    return load_settings()


@app.callback()
def _configure(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("dagster", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def open_library() -> Iterator[Library]:
    """The library for one command (`with open_library() as library:`); closed when the command ends."""
    from face_pipeline.services.library import Library

    library = Library.from_settings(settings_from_env())
    try:
        yield library
    finally:
        library.close()
