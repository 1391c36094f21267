"""`face-pipeline` (also `python -m face_pipeline.cli`): faces <command>.

Commands parse their input, call one service (through Dagster for pipeline steps) and report.
Errors a user can fix print one line and exit non-zero. One module per group of commands; commands of other
packages (`faces evaluate`, from face_pipeline_eval) come in through the `face_pipeline.cli` entry point group:
each entry point is a function that adds commands to the `faces` app, so the product never imports them.
"""

import logging
import sys
from importlib.metadata import entry_points

from face_pipeline.cli import clustering, doctor, ingest, labelling, serve, training  # noqa: F401  (registers)
from face_pipeline.cli.common import app, faces

__all__ = ["app", "main"]

PLUGIN_GROUP = "face_pipeline.cli"


def _register_plugins() -> None:
    for entry_point in entry_points(group=PLUGIN_GROUP):
        try:
            entry_point.load()(faces)
        except ImportError as exc:  # a plugin whose package is gone: the rest of the CLI still works
            logging.getLogger(__name__).debug("CLI plugin %s not loaded: %s", entry_point.name, exc)


_register_plugins()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
