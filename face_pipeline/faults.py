"""Crash points for the crash-safety tests: FACE_TEST_CRASH_AT=name[:n] kills this process (SIGKILL, as the
OOM killer or a power cut would) the n-th time (default 1st) it reaches `crash_point(name)`.

The points sit where a crash hurts most: between a vector write and the SQL commit, between an SQL commit
and the payload update that follows it, between a checkpoint file and its registry row. Unset (always, in
real use) a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

CRASH_ENV = "FACE_TEST_CRASH_AT"
_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
