"""faces evaluate: the accuracy of the pipeline on a folder-per-person photo set.

Registered on the product's `faces` app through the `face_pipeline.cli` entry point group (pyproject), so the
product's CLI never imports this package; the evaluation itself is imported only when the command runs.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated

import typer

from face_pipeline.cli.common import friendly
from face_pipeline.errors import InvalidInput

# Packages of the `eval` extra that the product does not install.
EVAL_EXTRA = ("hdbscan",)


def register(faces: typer.Typer) -> None:
    """Add `evaluate` to the `faces` command group (the entry point's hook)."""
    faces.command("evaluate")(friendly(evaluate_command))


def evaluate_command(
    dataset: Annotated[Path, typer.Argument(help="Folder-per-person photo set: <person>/<photo>.")],
    rounds: Annotated[int, typer.Option(min=0, max=100, help="Labelling rounds of the simulated user.")] = 3,
    clusters_per_round: Annotated[int, typer.Option(min=1, max=10_000, help="Clusters named per round.")] = 15,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where to build the throwaway library (default: a temporary folder); keeps a snapshot "
            "of the first ingest there for the next evaluation."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per row instead of the table.")] = False,
    train: Annotated[
        bool,
        typer.Option(
            "--train",
            help="After each round: train a checkpoint on the labels, switch to it if promoted, fit and gate the "
            "learned matcher (FACE_LEARNED_MATCHING), reassign; score each stage (baseline, after 1st training, "
            "...) with its space, checkpoint verdict and matching. 'round k' rows match raw on the same labels; "
            "phase B is scored with raw matching, then with the learned matcher where its gate let it in.",
        ),
    ] = False,
) -> None:
    """Play DATASET as a growing library with a simulated user and score every stage against its folders."""
    missing = [name for name in EVAL_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise InvalidInput(f'faces evaluate needs the eval extra ({", ".join(missing)}): pip install -e ".[eval]"')
    from face_pipeline_eval.evaluation import evaluate

    report = evaluate(dataset, rounds=rounds, clusters_per_round=clusters_per_round, data_dir=data_dir, train=train)
    if as_json:
        for row in report.json_rows():
            typer.echo(json.dumps(row))
    else:
        typer.echo(report.markdown())
