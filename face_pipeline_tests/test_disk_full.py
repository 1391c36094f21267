"""A full disk under the library: one clear line and nothing half-written, instead of SIGBUS (the embedded
vector engine's mapped files cannot grow) or SQLite's "disk I/O error". A real small tmpfs is mounted for the
data folder (root with CAP_SYS_ADMIN, as on CI here; skipped, saying so, where mounting is not allowed)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from face_pipeline.storage.disk_space import MB, free_bytes
from face_pipeline_tests.photo_corpus import copy_people
from face_pipeline_tests.test_crash_safety import _cli, _env, _ok


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    filler = disk / "filler"
    with open(filler, "ab") as handle:
        handle.truncate(0)
    size = max(free_bytes(disk) - leave_bytes, 0)
    with open(filler, "wb") as handle:  # written, not sparse: tmpfs counts only written pages
        chunk = b"\0" * MB
        for _ in range(size // MB):
            handle.write(chunk)
    return filler


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path: Path, lfw_mini: Path, small_disk: Path):
    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos, people=2, photos_each=4)
    env = _env(tmp_path, photos)
    env["FACE_DATA_DIR"] = str(small_disk / "data")  # vectors and thumbnails on the small disk
    env["FACE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'library.db'}"  # SQL elsewhere: the store meets it first
    _ok(_cli(env, "backfill"))
    _ok(_cli(env, "cluster-dual"))
    before = _ok(_cli(env, "export", "--output", str(tmp_path / "before.csv")))
    assert "faces" in before

    filler = _fill(small_disk, leave_bytes=20 * MB)  # room for SQLite, not for the vector engine
    refused = _cli(env, "cluster-dual")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "is full" in last and "nothing was written" in last
    labelled = _cli(env, "label-face", "1", "Ann Example")  # SQL is the truth: the name stands
    assert labelled.returncode == 0, labelled.stderr

    filler.unlink()
    _fill(small_disk, leave_bytes=0)
    stats = _cli(env, "stats")
    assert stats.returncode == 2 and stats.stderr.strip().count("\n") == 0 and "is full" in stats.stderr

    (small_disk / "filler").unlink()
    _ok(_cli(env, "cluster-dual"))  # heals the payload the full disk kept from being written
    assert "in step" in _ok(_cli(env, "doctor"))
    assert "Ann Example" not in (tmp_path / "before.csv").read_text()
    _ok(_cli(env, "export", "--output", str(tmp_path / "after.csv")))
    assert "Ann Example" in (tmp_path / "after.csv").read_text()
