"""Helpers shared by the benchmark scripts: peak memory and the one-JSON-line-per-figure format."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb(include_children: bool = True) -> float:
    """Peak resident memory of this process (and of its finished children) in MiB (Linux: ru_maxrss in KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if include_children else 0
    return max(own, children) / 1024


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def worktree(rev: str, where: Path) -> Iterator[Path]:
    """REV's code checked out at `where` (a detached git worktree) for a before/after run; removed afterwards."""
    git = ["git", "-C", str(REPO), "worktree"]
    subprocess.run([*git, "add", "--detach", str(where), rev], check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run([*git, "remove", "--force", str(where)], capture_output=True, check=False)


@contextmanager
def checkouts(compare: str | None, scratch: Path) -> Iterator[dict[str, Path]]:
    """{commit: code folder}: this checkout, and first, with --compare REV, REV's in a temporary worktree."""
    if compare is None:
        yield {git_commit(): REPO}
        return
    with worktree(compare, scratch / "compare") as other:
        yield {compare: other, git_commit(): REPO}


def emit(bench: str, **figures: Any) -> None:
    """Print one JSON line so runs can be compared across commits."""
    print(json.dumps({"bench": bench, "commit": git_commit(), **figures}, sort_keys=False), flush=True)


def default_dataset(name: str) -> Path:
    path = REPO.parent / "shared" / "datasets" / name
    if not path.is_dir():
        sys.exit(f"dataset not found: {path}")
    return path


def lfw_dev_embeddings(model: str = "dlib") -> dict[str, Any]:
    """The main face of every lfw-dev photo embedded by `model` (.cache/lfw-dev-<model>.npz: vectors,
    identities, paths), built on first use by the tests' own cache builder (dlib ~4-7 min, buffalo_s ~1.5)."""
    from face_pipeline_tests.lfw_cache import load_or_build

    return load_or_build(default_dataset("lfw-dev"), REPO / ".cache", model)
