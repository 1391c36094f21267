"""`face-pipeline` (also `python -m face_pipeline.cli`): faces <command>.

Commands parse their input, call one service (through Dagster for pipeline steps) and report.
Errors a user can fix print one line and exit non-zero. One module per group of commands.
"""

import sys

from face_pipeline.cli import clustering, evaluate, ingest, labelling, serve, training  # noqa: F401  (registers)
from face_pipeline.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
