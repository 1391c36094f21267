"""`faces evaluate`: play a folder-per-person photo set as a library that grows, and score every stage.

1. Phase A: each person's first ~60% of photos and half of the one-off strangers are ingested (catalog and
   detection services, no labels) and clustered (`run_cluster_dual`: the sequence the CLI's job runs).
2. Rounds: a simulated user names the largest unknown clusters after their commonest person and rejects
   the other faces in them (label and reject services); cluster-dual runs again.
3. Phase B: the remaining photos arrive, are ingested and clustered.

With `train=True` each round goes on to label -> train -> reassign (`train_and_reassign_stage`): a
checkpoint is trained on the labels so far, the newest promoted one becomes the active space, and the
library is reassigned in it; the stage after the k-th training is scored as "after k-th training" (round 0
is then called "baseline"). Too few labels (< 5 people x 5 faces) leave the library as it was: the row says
"not enough labels". The evaluation's own thresholds (settings overrides, FACE_* variables) are written into
the raw space's row of the throwaway library, so that training maps those, not the defaults, onto the
projected space, and each space is then clustered with its own.

Every stage is scored against the folder names (see `scoring`), next to two baselines on the same
vectors: the seed's plain HDBSCAN and Immich's algorithm. The ground truth drives only the simulated user
and the scoring; the library holds anonymous copies of the photos, so the pipeline never sees a name the
user did not type.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from face_pipeline.domain.assignment import thresholds_for_space
from face_pipeline.errors import InvalidInput
from face_pipeline.services.catalog import scan_photos
from face_pipeline.services.cluster_dual import run_cluster_dual
from face_pipeline.services.detection import detect_pending_faces
from face_pipeline.services.library import Library
from face_pipeline.services.run_params import space_params
from face_pipeline.services.space_registry import active_space, set_thresholds
from face_pipeline.services.training import TooFewLabels, TrainingReport, train_and_reassign_stage
from face_pipeline.settings import Settings, load_settings
from face_pipeline.storage.models import FaceInstance
from face_pipeline_eval.dataset import (
    PHASE_A,
    PHASE_B,
    EvalDataset,
    load_dataset,
    place_photos,
    write_manifest,
)
from face_pipeline_eval.scoring import (
    BaselineFigures,
    LibraryState,
    StageFigures,
    read_state,
    score_baselines,
    score_pipeline,
)
from face_pipeline_eval.simulated_user import RoundActions, name_largest_clusters, names_for
from face_pipeline_eval.table import StageTraining, evaluation_table

log = logging.getLogger(__name__)

MARKER = ".face-evaluation"  # marks a --data-dir as ours: only such a folder is ever emptied
# Settings that change what detection produces: a snapshot of phase A's ingest is reused only if they match.
_DETECTION_SETTINGS = ("embedder", "model_name", "detect_max_side", "min_face_size", "min_detection_score")


@dataclass
class EvaluationReport:
    dataset: str
    photos: dict[str, int] = field(default_factory=dict)  # phase -> photos
    ingest: dict[str, Any] = field(default_factory=dict)  # phase -> faces, seconds, reused snapshot
    params: dict[str, Any] = field(default_factory=dict)  # the pipeline's thresholds in force
    rows: list[StageFigures] = field(default_factory=list)
    user: list[RoundActions] = field(default_factory=list)  # one per round
    baselines: list[BaselineFigures] = field(default_factory=list)
    # With --train only: one per pipeline row (the active space, the checkpoint trained just before it).
    training: list[StageTraining] = field(default_factory=list)
    user_of_row: dict[int, int] = field(default_factory=dict)  # row index -> index into `user` (train mode)

    def _row_users(self) -> list[RoundActions | None]:
        if self.training:
            return [self.user[self.user_of_row[i]] if i in self.user_of_row else None for i in range(len(self.rows))]
        return [self.user[i - 1] if 0 < i <= len(self.user) else None for i in range(len(self.rows))]

    def markdown(self) -> str:
        """A short header (dataset, photos, the pipeline's thresholds) and the table."""
        photos = ", ".join(f"{phase}: {n} photos" for phase, n in self.photos.items())
        params = ", ".join(f"{k} {v}" for k, v in self.params.items())
        header = f"Evaluation of {self.dataset} ({photos}); pipeline: {params}"
        table = evaluation_table(self.rows, self._row_users(), self.baselines, self.training or None)
        return header + "\n\n" + table

    def json_rows(self) -> list[dict[str, Any]]:
        """One dict per table row: {"bench": "accuracy", "stage": ..., "method": ..., figures...}."""
        out: list[dict[str, Any]] = []
        for i, (row, actions) in enumerate(zip(self.rows, self._row_users(), strict=True)):
            user = asdict(actions) if actions is not None else {}
            extra = self.training[i].as_json() if self.training else {}
            out.append(
                {"bench": "accuracy", "method": "pipeline", **row.as_json(), **_prefixed("user_", user), **extra}
            )
        for base in self.baselines:
            out.append({"bench": "accuracy", **base.as_json()})
        return out


def _prefixed(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {prefix + k: v for k, v in values.items()}


def evaluate(
    dataset_dir: Path,
    *,
    rounds: int = 3,
    clusters_per_round: int = 15,
    data_dir: Path | None = None,
    settings_overrides: dict[str, Any] | None = None,
    phase_b: bool = True,
    train: bool = False,
) -> EvaluationReport:
    """Run the whole evaluation in a throwaway library under `data_dir` (a temporary folder by default).

    With a `data_dir`, the library as ingested in phase A is kept under `data_dir/snapshots` and reused by
    a later evaluation of the same photos with the same detection settings (detection is the slow part;
    everything after it runs afresh). settings_overrides: Settings fields (e.g. person_match_threshold);
    FACE_* variables apply as usual, except where the library lives. phase_b=False stops after the rounds
    (for choosing settings on phase A alone). train=True: label -> train -> reassign after every round
    (see the module doc).
    """
    if rounds < 0 or clusters_per_round < 1:
        raise InvalidInput(f"rounds must be >= 0 and clusters per round >= 1, got {rounds} and {clusters_per_round}")
    dataset = load_dataset(dataset_dir)
    with _workspace(data_dir) as work:
        settings = load_settings(
            **(settings_overrides or {}),
            photos_dir=work / "photos",
            data_dir=work / "pipeline",
            database_url=None,  # never the user's own library
            qdrant_url=None,
        )
        write_manifest(dataset, work / "truth.json")
        run = _Run(
            dataset,
            settings,
            names_for(dataset.photos_per_identity),
            keep_snapshots=data_dir is not None,
            train=train,
        )
        try:
            return run.play(rounds, clusters_per_round, phase_b=phase_b)
        finally:
            run.library.close()


@contextmanager
def _workspace(data_dir: Path | None) -> Iterator[Path]:
    if data_dir is None:
        with tempfile.TemporaryDirectory(prefix="face-evaluation-") as tmp:
            yield Path(tmp)
        return
    data_dir = data_dir.expanduser().resolve()
    if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / MARKER).exists():
        raise InvalidInput(f"--data-dir {data_dir} is not empty and holds no earlier evaluation: give a new folder")
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).touch()
    for old in ("photos", "pipeline"):  # an earlier evaluation's library: start afresh
        shutil.rmtree(data_dir / old, ignore_errors=True)
    yield data_dir


class _Run:
    def __init__(
        self,
        dataset: EvalDataset,
        settings: Settings,
        name_of: dict[str, str],
        *,
        keep_snapshots: bool,
        train: bool = False,
    ) -> None:
        self.dataset = dataset
        self.settings = settings
        self.name_of = name_of  # identity -> the name the simulated user types
        self.identity_of_name = {name: identity for identity, name in name_of.items()}
        self.identity_of_path = dataset.identity_of_library_path(settings.photos_dir)
        self.keep_snapshots = keep_snapshots
        self.train = train
        self.library = Library.from_settings(settings)
        self.report = EvaluationReport(str(dataset.root))

    def play(self, rounds: int, clusters_per_round: int, *, phase_b: bool) -> EvaluationReport:
        self._ingest_phase_a()
        if self.train:
            self._own_thresholds()
        state = self._cluster_and_score("baseline" if self.train else "round 0")
        self._baselines("phase A", state)
        for number in range(1, rounds + 1):
            truth = {int(f): str(t) for f, t in zip(state.face_ids, state.truth, strict=True) if t}
            actions = name_largest_clusters(self.library, truth, self.name_of, clusters_per_round)
            log.info(
                "round %d: the user named %d clusters (%d faces), rejected %d faces",
                number,
                actions.clusters_named,
                actions.faces_labelled,
                actions.faces_rejected,
            )
            self.report.user.append(actions)
            self.report.user_of_row[len(self.report.rows)] = len(self.report.user) - 1
            if self.train:
                self._learned_matching(False)  # "round k": the new labels, matched raw
            state = self._cluster_and_score(f"round {number}")
            if self.train:
                self._learned_matching(True)  # "after k-th training": checkpoint and learned matcher
                state = self._train_and_score(number)
        if phase_b:
            self._ingest(PHASE_B)
            if self.train:  # the same library, labels and space matched raw first, then as trained
                self._learned_matching(False)
                self._cluster_and_score("phase B, raw matching")
                self._learned_matching(True)
            state = self._cluster_and_score("phase B")
            self._baselines("phase B", state)
        return self.report

    # --- ingest -----------------------------------------------------------------------------------------

    def _snapshot_dir(self) -> Path:
        detection = "|".join(str(getattr(self.settings, name)) for name in _DETECTION_SETTINGS)
        key = f"{self.dataset.fingerprint()}-{hashlib.sha256(detection.encode()).hexdigest()[:8]}"
        return self.settings.data_dir.parent / "snapshots" / f"phase-a-{key}"

    def _ingest_phase_a(self) -> None:
        snapshot = self._snapshot_dir()
        if self.keep_snapshots and (snapshot / "done").exists():
            self.library.close()
            shutil.rmtree(self.settings.data_dir)  # the empty library opening it created
            shutil.copytree(snapshot / "pipeline", self.settings.data_dir)
            self.library = Library.from_settings(self.settings)
            self.report.ingest["phase A snapshot"] = str(snapshot)
            log.info("phase A: starting from the ingest snapshot %s", snapshot)
        faces = self._ingest(PHASE_A)
        if faces == 0:
            raise InvalidInput(f"no face was found in the first photos of {self.dataset.root}: nothing to evaluate")
        if self.keep_snapshots and not (snapshot / "done").exists():
            self.library.close()  # SQLite folds its write-ahead log into the file on the last close
            shutil.rmtree(snapshot, ignore_errors=True)
            shutil.copytree(self.settings.data_dir, snapshot / "pipeline")
            (snapshot / "done").touch()

    def _ingest(self, phase: str) -> int:
        """Ingest the phase's photos; returns the faces the library holds afterwards."""
        photos = self.dataset.in_phase(phase)
        place_photos(photos, self.settings.photos_dir)
        started = time.perf_counter()
        scan = scan_photos(self.library.db, self.settings.photos_dir)
        with self.library.vectors() as vectors:
            detected = detect_pending_faces(self.settings, self.library.db, vectors)
        seconds = time.perf_counter() - started
        self.report.photos[f"phase {phase.upper()}"] = len(photos)
        self.report.ingest[f"phase {phase.upper()}"] = {
            "new_photos": scan.new,
            "photos_detected": detected.photos,
            "faces": detected.faces,
            "skipped": detected.skipped,
            "seconds": round(seconds, 1),
        }
        log.info("phase %s: %d photos, %d new faces (%.0f s)", phase.upper(), len(photos), detected.faces, seconds)
        with self.library.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(FaceInstance)) or 0)

    # --- clustering and scoring -----------------------------------------------------------------------

    def _cluster_and_score(self, stage: str) -> LibraryState:
        started = time.perf_counter()
        with self.library.vectors() as vectors:
            # With training, new faces (phase B) get their vectors in the projected space too.
            dual = run_cluster_dual(self.library, vectors, space_mode="trained" if self.train else "auto")
        seconds = time.perf_counter() - started
        if not self.report.params:
            self.report.params = self._params()
        state = read_state(self.library.db, self.identity_of_path, self.identity_of_name)
        matching = StageTraining(matching=_short(dual.assignments.matching, 200))
        self._add_row(score_pipeline(stage, state, self.dataset.strangers, seconds), matching)
        return state

    def _learned_matching(self, on: bool) -> None:
        """With --train: the learned matcher (FACE_LEARNED_MATCHING) is on for the stages after a training and
        off for the rows that show the raw space on the same labels."""
        if self.settings.learned_matching != on:
            self.settings = self.settings.model_copy(update={"learned_matching": on})
            self.library = Library(self.settings, self.library.db)

    def _add_row(self, row: StageFigures, training: StageTraining | None = None) -> None:
        self.report.rows.append(row)
        if self.train:
            with self.library.db.session() as session:
                space = active_space(session)
                name = "–" if space is None else f"{space.kind} {space.name}"
            self.report.training.append(training or StageTraining())
            self.report.training[-1].space = name
        log.info(
            "%s: precision %.3f, unknown purity %.3f, recall %.3f, BCubed F %.3f",
            row.stage,
            row.precision,
            row.unknown_purity,
            row.recall,
            row.bcubed_f,
        )

    def _train_and_score(self, number: int) -> LibraryState:
        """label -> train -> reassign: score the library after the round's training (or say why none)."""
        stage = f"after {_ordinal(number)} training"
        started = time.perf_counter()
        try:
            stage_report = train_and_reassign_stage(self.library)
        except TooFewLabels as exc:
            log.info("%s: not enough labels (%s)", stage, exc)
            training = StageTraining(checkpoint="not enough labels", reason=_short(str(exc), 80))
            with self.library.vectors() as vectors:  # no checkpoint: the learned matcher may still help
                dual = run_cluster_dual(self.library, vectors, space_mode="trained")
            training.matching = _short(dual.assignments.matching, 200)
        else:
            report = stage_report.training
            training = _stage_training(report)
            training.matching = _short(stage_report.cluster_dual.assignments.matching, 200)
            log.info("%s: checkpoint %s (%s)", stage, training.checkpoint, report.reason)
        log.info("%s: %s", stage, training.matching)
        seconds = time.perf_counter() - started
        state = read_state(self.library.db, self.identity_of_path, self.identity_of_name)
        self._add_row(score_pipeline(stage, state, self.dataset.strangers, seconds), training)
        return state

    def _own_thresholds(self) -> None:
        """Write the thresholds in force (settings over the raw row) into the raw space's row and clear the
        overrides: training then maps these onto a projected space, and each space uses its own."""
        with self.library.db.session() as session:
            params = space_params(self.library, session)
            space = active_space(session)
            assert space is not None  # space_params raised otherwise
            defaults = thresholds_for_space(space.name)
            eps = params.cluster_eps if params.cluster_eps is not None else defaults.cluster_eps
            own = replace(defaults, threshold=params.person_threshold, margin=params.person_margin, cluster_eps=eps)
            set_thresholds(session, space.name, own)
        cleared = {"person_match_threshold": None, "person_match_margin": None, "unknown_eps": None}
        self.settings = self.settings.model_copy(update=cleared)
        self.library = Library(self.settings, self.library.db)

    def _params(self) -> dict[str, Any]:
        with self.library.db.session() as session:
            params = space_params(self.library, session)
        return {
            "space": params.space,
            "person_threshold": params.person_threshold,
            "person_margin": params.person_margin,
            "cluster_eps": params.cluster_eps,
            "method": params.cluster_method,
            "min_cluster_size": params.min_cluster_size,
        }

    def _baselines(self, stage: str, state: LibraryState) -> None:
        with self.library.vectors() as vectors:
            matrix = vectors.fetch(self.report.params["space"], state.face_ids)
        eps = float(self.report.params["cluster_eps"])
        self.report.baselines.extend(score_baselines(stage, state, matrix, self.dataset.strangers, eps))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stage_training(report: TrainingReport) -> StageTraining:
    """The checkpoint's verdict in a few words: the gates' failures (if any), TAR and held-out pipeline recall,
    raw -> projected."""
    tar_key = next((k for k in report.figures if k.startswith("TAR@FAR")), None)
    figures = ""
    if tar_key is not None:
        raw, projected = report.figures[tar_key]
        figures = f"{tar_key.replace('TAR@FAR=', 'TAR@')} {raw:.3f}->{projected:.3f}"
    if "pipeline recall" in report.figures:
        raw, projected = report.figures["pipeline recall"]
        figures = f"{figures}, held-out recall {raw:.3f}->{projected:.3f}".lstrip(", ")
    if report.promote:
        reason = f"beats raw: {figures}"
    else:
        failures = report.reason.removeprefix("kept raw space: ").split(" (", 1)[0]
        reason = f"{failures}: {figures}" if figures else failures
    return StageTraining(
        checkpoint="promoted" if report.promote else "rejected",
        reason=reason,
        training_seconds=report.seconds,
        labels=report.label_count,
        device=report.device,
        checkpoint_space=report.space,
    )
