"""face-pipeline serve: the labelling API and review page."""

from __future__ import annotations

from typing import Annotated

import typer

from face_pipeline.cli.common import (
    app,
    friendly,
)
from face_pipeline.settings import load_settings


@app.command()
@friendly
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (FACE_API_HOST; default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65_535, help="Port (FACE_API_PORT; default 8000).")] = None,
) -> None:
    """Serve the labelling API (/api/v1, docs at /docs) and the review page (/)."""
    import uvicorn

    from face_pipeline.api.app import create_app

    overrides = {key: value for key, value in (("api_host", host), ("api_port", port)) if value is not None}
    settings = load_settings(**overrides)
    if settings.api_host not in ("127.0.0.1", "localhost", "::1") and settings.api_token is None:
        typer.echo(
            f"warning: listening on {settings.api_host} without FACE_API_TOKEN: anyone who can reach this "
            "machine can change labels",
            err=True,
        )
    typer.echo(f"review page: http://{settings.api_host}:{settings.api_port}/  (Ctrl-C to stop)")
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info")
