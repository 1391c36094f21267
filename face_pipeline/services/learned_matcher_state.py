"""Where the learned matcher's verdict is kept (pipeline_state, key `learned_matcher:<space>`), readable without
loading the matcher's numerical code: `faces stats` shows it and must stay light (test_cli_imports).
services/learned_matcher.py writes it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from face_pipeline.storage.models import PipelineState

STATE_PREFIX = "learned_matcher:"  # pipeline_state key prefix; the space name follows


def state_key(space: str) -> str:
    return f"{STATE_PREFIX}{space}"


def stored_verdict(session: Session, space: str) -> dict[str, Any] | None:
    """The last verdict on the space's learned matcher (use, reason, kind, at, figures), None before any."""
    row = session.get(PipelineState, state_key(space))
    return None if row is None else dict(row.value)
