"""The evaluation's human table (markdown): pipeline stages first, then the baselines on the same faces."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from face_pipeline.markdown import markdown_table
from face_pipeline_eval.scoring import BaselineFigures, StageFigures

COLUMNS = (
    "stage",
    "method",
    "people named",
    "user labels / rejects",
    "assignment precision",
    "unknown purity",
    "person recall",
    "known-people errors",
    "BCubed F (P / R)",
    "clusters / identities",
    "false accepts per 1,000",
    "strangers named",
    "strangers grouped",
    "seconds",
)
NOT_APPLICABLE = "–"
# With --train: added after "seconds" (the pipeline's rows only; the baselines run on the raw space).
TRAINING_COLUMNS = ("space", "checkpoint", "checkpoint reason", "training seconds", "matching")


@dataclass
class StageTraining:
    """A pipeline row's active space and the checkpoint trained just before it (none: no training ran)."""

    space: str = NOT_APPLICABLE  # "<kind> <name>" of the active embedding space
    checkpoint: str = "none"  # promoted | rejected | not enough labels | none
    reason: str = ""  # the gate's verdict in short
    training_seconds: float | None = None
    labels: int | None = None  # labelled faces trained on
    device: str | None = None
    checkpoint_space: str | None = None  # the checkpoint's space name (promoted or not)
    matching: str = NOT_APPLICABLE  # raw or the learned matcher, and the gate's reason (services/learned_matcher.py)

    def as_json(self) -> dict[str, Any]:
        return {("checkpoint_reason" if k == "reason" else k): v for k, v in asdict(self).items()}

    def cells(self) -> list[str]:
        seconds = NOT_APPLICABLE if self.training_seconds is None else f"{self.training_seconds:.1f}"
        return [
            self.space,
            self.checkpoint,
            self.reason.replace("|", "/") or NOT_APPLICABLE,
            seconds,
            self.matching.replace("|", "/"),
        ]


def _pct(value: float) -> str:
    return NOT_APPLICABLE if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _of(share: float, count: int) -> str:
    """A share with its denominator: in the rounds few faces are left for the automatic step."""
    return NOT_APPLICABLE if share is None or math.isnan(share) else f"{_pct(share)} of {count}"


def _num(value: float, digits: int = 3) -> str:
    return NOT_APPLICABLE if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _bcubed(f: float, p: float, r: float) -> str:
    return f"{_num(f)} ({_num(p)} / {_num(r)})"


def pipeline_cells(row: StageFigures, user: Any | None) -> list[str]:
    actions = NOT_APPLICABLE if user is None else f"{user.faces_labelled} / {user.faces_rejected}"
    return [
        row.stage,
        "pipeline",
        str(row.named_people),
        actions,
        _of(row.precision, row.automatic),
        _pct(row.unknown_purity),
        _of(row.recall, row.recall_faces),
        str(row.known_errors),
        _bcubed(row.bcubed_f, row.bcubed_p, row.bcubed_r),
        f"{row.clusters} / {row.identities}",
        _num(row.false_accepts_per_1000, 1),
        _pct(row.strangers_named),
        _pct(row.strangers_grouped),
        _num(row.seconds, 1),
    ]


def baseline_cells(row: BaselineFigures) -> list[str]:
    return [
        row.stage,
        f"{row.method} ({row.params})",
        NOT_APPLICABLE,
        NOT_APPLICABLE,
        NOT_APPLICABLE,
        _pct(row.unknown_purity),
        NOT_APPLICABLE,
        NOT_APPLICABLE,
        _bcubed(row.bcubed_f, row.bcubed_p, row.bcubed_r),
        f"{row.clusters} / {row.identities}",
        NOT_APPLICABLE,
        NOT_APPLICABLE,
        _pct(row.strangers_grouped),
        _num(row.seconds, 1),
    ]


def evaluation_table(
    rows: list[StageFigures],
    user: list[Any | None],
    baselines: list[BaselineFigures],
    training: list[StageTraining] | None = None,
) -> str:
    """rows: round 0, the rounds (with --train each followed by its training), phase B; user: the simulated
    user's actions that led to each row, None where none; training: one per row with --train, else None
    (and no training columns)."""
    columns = COLUMNS + (TRAINING_COLUMNS if training is not None else ())
    lines: list[list[str]] = []
    for i, row in enumerate(rows):
        cells = pipeline_cells(row, user[i])
        if training is not None:
            cells += training[i].cells()
        lines.append(cells)
    for base in baselines:
        lines.append(baseline_cells(base) + ([NOT_APPLICABLE] * len(TRAINING_COLUMNS) if training is not None else []))
    return markdown_table(columns, lines)
