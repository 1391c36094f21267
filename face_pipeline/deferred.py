"""Work a command may finish after its caller has the answer.

A user's edit is committed in SQL (the source of truth) and then mirrored onto the vector store's payloads,
which costs ~0.3 s of opening, writing, flushing and closing the embedded store. A process that outlives its
answer (the warm CLI's child, `warm_cli`) collects that mirroring with `deferring()` and runs it after the
caller has its output and exit status; everywhere else (a cold CLI process, the API, Dagster) `after_reply`
runs the task at once. A deferred task that never runs (a crash) leaves payloads stale, as a store held by a
running pipeline does: the next clustering run or `faces doctor --repair` rewrites them from SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

_pending: list[Callable[[], None]] | None = None  # None: run tasks at once


def after_reply(task: Callable[[], None]) -> None:
    if _pending is None:
        task()
    else:
        _pending.append(task)


@contextmanager
def deferring() -> Iterator[list[Callable[[], None]]]:
    """Within the block `after_reply` collects its tasks into the yielded list (run them after replying)."""
    global _pending
    _pending = []
    try:
        yield _pending
    finally:
        _pending = None
