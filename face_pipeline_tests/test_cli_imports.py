"""Everyday commands stay light: labelling, statistics and their one-line errors load no face model, no torch,
no Dagster and no scikit-learn (each costs seconds at start-up; issue 14 measured 3-5 s per `faces label`).

Runs the real CLI in a fresh Python on an empty library and lists what it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "dagster", "sklearn", "onnxruntime", "insightface", "dlib", "scipy", "matplotlib")
COMMANDS = [
    ["faces", "stats"],
    ["faces", "label", "unknown_cluster_5", "Bob"],
    ["faces", "label-face", "99999", "Alice"],
    ["faces", "reject", "99999"],
    ["faces", "unassign", "99999"],
    ["faces", "rename-person", "nobody", "Somebody"],
    ["faces", "merge-persons", "nobody", "anybody"],
]
PROBE = """
import json, sys
from face_pipeline.cli import app
# What a successful edit needs too: the registry (which collections to update) and the vector store.
import face_pipeline.services.space_registry, face_pipeline.storage.vectors
outcomes = []
for args in json.loads(sys.argv[1]):
    outcomes.append(app(args, standalone_mode=False))  # the exit code of a typer.Exit, else None
heavy = json.loads(sys.argv[2])
print(json.dumps({"outcomes": outcomes, "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


def test_labelling_and_stats_commands_import_nothing_heavy(tmp_path: Path):
    photos = tmp_path / "photos"
    photos.mkdir()
    env = {**os.environ, "FACE_DATA_DIR": str(tmp_path / "data"), "FACE_PHOTOS_DIR": str(photos)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(COMMANDS), json.dumps(HEAVY)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcomes"] == [None, 2, 2, 2, 2, 2, 2], done.stderr  # stats works; the rest: one-line errors
    assert result["loaded"] == [], f"everyday commands imported {result['loaded']}"


BACKFILL_PROBE = """
import json, sys
from face_pipeline.cli import app
code = app(["faces", "backfill"], standalone_mode=False)
heavy = json.loads(sys.argv[1])
print(json.dumps({"code": code, "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


def test_a_backfill_with_nothing_pending_loads_no_face_model_and_no_torch(tmp_path: Path, lfw_mini: Path):
    """A no-op pipeline command pays for Dagster and its run record, not for torch or the face model."""
    from face_pipeline_tests.photo_corpus import copy_people

    photos = tmp_path / "photos"
    copy_people(lfw_mini, photos, people=1, photos_each=2)
    env = {
        **os.environ,
        "FACE_DATA_DIR": str(tmp_path / "data"),
        "FACE_PHOTOS_DIR": str(photos),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "FACE_EMBEDDER": "buffalo_s",
    }
    first = subprocess.run([sys.executable, "-m", "face_pipeline.cli", "faces", "backfill"], env=env, timeout=300)
    assert first.returncode == 0
    done = subprocess.run(
        [sys.executable, "-c", BACKFILL_PROBE, json.dumps(HEAVY)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] is None, done.stderr
    assert "0 new" in done.stdout and "detected: 0 faces in 0 photos" in done.stdout
    # Dagster runs it; scipy.sparse (~10 ms) comes with the clustering module the definitions load.
    unexpected = [m for m in result["loaded"] if m not in ("dagster", "scipy")]
    assert unexpected == [], f"a no-op backfill imported {result['loaded']}"
