"""The photo set an evaluation replays: a folder-per-person tree split into two arrival phases.

The library the pipeline sees holds anonymous copies (`a/00042.jpg`): the folder names are the ground
truth and must reach only the simulated user and the scoring, never the pipeline's database.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from face_pipeline.errors import InvalidInput
from face_pipeline.services.library_walk import PHOTO_EXTENSIONS

PHASE_A = "a"  # the library as first ingested
PHASE_B = "b"  # photos that arrive after the labelling rounds
FIRST_SHARE = 0.6  # of each person's photos (at least one) in phase A


@dataclass(frozen=True)
class EvalPhoto:
    source: Path  # the dataset's file (its folder is the identity)
    identity: str
    phase: str  # PHASE_A or PHASE_B
    library_name: str  # relative path in the library: "<phase>/<number><ext>", nothing from the dataset


@dataclass(frozen=True)
class EvalDataset:
    root: Path
    photos: tuple[EvalPhoto, ...]
    photos_per_identity: dict[str, int]

    @property
    def strangers(self) -> frozenset[str]:
        """One-off people: a single photo in the whole set."""
        return frozenset(i for i, n in self.photos_per_identity.items() if n == 1)

    def in_phase(self, phase: str) -> list[EvalPhoto]:
        return [p for p in self.photos if p.phase == phase]

    def identity_of_library_path(self, photos_dir: Path) -> dict[str, str]:
        """Absolute library path (as the catalog stores it) -> identity."""
        root = os.path.abspath(photos_dir.resolve())
        return {os.path.join(root, p.library_name): p.identity for p in self.photos}

    def fingerprint(self) -> str:
        """Changes when any file, split or library name changes (keys the ingest snapshot)."""
        digest = hashlib.sha256()
        for p in self.photos:
            stat = p.source.stat()
            digest.update(f"{p.source}|{stat.st_size}|{stat.st_mtime_ns}|{p.phase}|{p.library_name}\n".encode())
        return digest.hexdigest()[:16]


def load_dataset(root: Path, *, seed: int = 0) -> EvalDataset:
    """Read a folder-per-person tree (`<person>/<photo>`) and split it into the two phases.

    Phase A: each person's first ~60% of photos in name order (at least one), and every other one-off
    stranger; phase B: the rest. Library names are numbered in a seeded random order, so neither the
    names nor the order of arrival say who is who.
    """
    if not root.is_dir():
        raise InvalidInput(f"dataset folder not found: {root}")
    people: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in PHOTO_EXTENSIONS)
        if photos:
            people[folder.name] = photos
    if not people:
        raise InvalidInput(
            f"{root} is not a folder-per-person photo set: no sub-folder of it holds photos "
            f"({', '.join(sorted(PHOTO_EXTENSIONS))})"
        )
    strangers = [name for name, photos in people.items() if len(photos) == 1]
    late_strangers = set(strangers[1::2])
    chosen: list[tuple[Path, str, str]] = []
    for name, photos in people.items():
        first = 0 if name in late_strangers else max(1, math.floor(FIRST_SHARE * len(photos) + 0.5))
        chosen.extend((photo, name, PHASE_A if i < first else PHASE_B) for i, photo in enumerate(photos))
    numbers = np.random.default_rng(seed).permutation(len(chosen))
    width = len(str(len(chosen)))
    photos_out = tuple(
        EvalPhoto(source, name, phase, f"{phase}/{int(number):0{width}d}{source.suffix.lower()}")
        for (source, name, phase), number in zip(chosen, numbers, strict=True)
    )
    return EvalDataset(root, photos_out, {name: len(photos) for name, photos in people.items()})


def place_photos(photos: Sequence[EvalPhoto], photos_dir: Path) -> None:
    """Copy photos into the library under their anonymous names (mtime kept: a re-copy is unchanged)."""
    for photo in photos:
        target = photos_dir / photo.library_name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(photo.source, target)


def write_manifest(dataset: EvalDataset, path: Path) -> None:
    """The evaluator's own key (library name -> identity), beside the library, for anyone checking a run."""
    path.write_text(json.dumps({p.library_name: p.identity for p in dataset.photos}, indent=0))
