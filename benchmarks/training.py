"""Learning from labels through the services: speed on 10K labelled faces, and the gate on real lfw-dev faces.

    .venv/bin/python benchmarks/training.py            # both parts
    .venv/bin/python benchmarks/training.py speed      # 20 epochs x 10K labelled faces, 128-d and 512-d
    .venv/bin/python benchmarks/training.py lfw        # real dlib vectors of lfw-dev (.cache/lfw-dev-dlib.npz)
    .venv/bin/python benchmarks/training.py options [--quick]   # ways of learning from labels side by side
                                                              # (benchmarks/learning_options.py, issue 12)
    .venv/bin/python benchmarks/training.py product DATA_DIR DATASET [--options raw,boundaries,library,adaptive]
        [--sweep]
        # the product's learned-matcher gate, raw vs learned, on the library a `faces evaluate --train
        # --data-dir DATA_DIR` left (benchmarks/learning_replay.py): precision, purity, recall, known-people
        # errors, strangers named, false accepts and the seconds of the run (fit + gate + guard + matching)

Goal (issue 5): 20 epochs on 10K labelled faces in <= 30 s on the shared 2-core box (training uses one
torch thread by design: domain.projection.TrainingParams.num_threads measured two threads slower).

Each case builds a library in a temporary folder through the real services (the raw space registered as
detection registers it, face rows in SQL, vectors in the embedded store, labels confirmed as a user's are)
and times the use cases: read_training_set (SQL + vector fetch), train_checkpoint (training with the gate,
thresholds of the projected space, checkpoint files and row) and regenerate_embeddings (every face projected
into the new collection, then the switch).

speed: synthetic faces, 1000 people x 10, identity in a quarter of the dimensions plus a large variation all
people share (a projection can learn to drop it), registered under the real model names with raw thresholds
fitted to them (false-accept rate 1e-3 for the person threshold, 1e-2 for cluster eps). Run once with early
stopping off (all 20 epochs) and once as shipped (patience 5).
lfw: the dlib vectors of lfw-dev that the ingest benchmark computed with the real pipeline; a user has
named everybody with 5+ photos.

Prints a line per case, then one JSON line per figure: {"bench": "training", "case", "metric", "value"}.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit, lfw_dev_embeddings, peak_rss_mb  # noqa: E402
from face_pipeline.domain.assignment import SpaceThresholds  # noqa: E402
from face_pipeline.domain.naming import noise_cluster_id  # noqa: E402
from face_pipeline.domain.verification import l2_normalise, pair_scores, sample_pairs  # noqa: E402
from face_pipeline.services.labels import confirm_faces  # noqa: E402
from face_pipeline.services.library import Library  # noqa: E402
from face_pipeline.services.space_registry import register_raw_space  # noqa: E402
from face_pipeline.services.space_switch import regenerate_embeddings  # noqa: E402
from face_pipeline.services.training import (  # noqa: E402
    TrainingReport,
    read_training_set,
    train_checkpoint,
    training_params,
)
from face_pipeline.settings import load_settings  # noqa: E402
from face_pipeline.storage.models import FaceInstance, Image, Person  # noqa: E402
from face_pipeline.vision.types import EmbeddingSpaceInfo  # noqa: E402
from face_pipeline_eval.synthetic import nuisance_faces  # noqa: E402
from face_pipeline_eval.thresholds import choose_threshold  # noqa: E402

SPACES = {128: ("dlib_resnet_v1", "dlib"), 512: ("insightface_buffalo_l", "buffalo_l")}


def calibrated_thresholds(vectors: np.ndarray, people: np.ndarray) -> SpaceThresholds:
    """Raw-space thresholds fitted to synthetic faces (the model defaults fit real dlib / ArcFace vectors, not
    these): person threshold at a false-accept rate of 1e-3, cluster eps at 1e-2, on sampled pairs."""
    i, j, same = sample_pairs(people, 200_000, np.random.default_rng(1))
    scores = pair_scores(l2_normalise(vectors), i, j)
    threshold = choose_threshold(scores[same], scores[~same], 1e-3)
    return SpaceThresholds(threshold, 0.02, 1.0 - choose_threshold(scores[same], scores[~same], 1e-2))


def build_library(
    root: Path, dim: int, vectors: np.ndarray, people: np.ndarray, thresholds: SpaceThresholds | None = None
) -> Library:
    """A library of one photo per face; people: (n,) int, -1 = nobody named the face."""
    space, model = SPACES[dim]
    context = Library.from_settings(load_settings(data_dir=root / "data", photos_dir=root, embedder="dlib"))
    n = vectors.shape[0]
    with context.db.session() as session:
        register_raw_space(session, EmbeddingSpaceInfo(space, model, dim), thresholds=thresholds)
        image_rows = [
            {"path": f"/bench/{i}.jpg", "size_bytes": 1, "mtime": 0.0, "status": "done", "face_count": 1}
            for i in range(n)
        ]
        image_ids = session.scalars(insert(Image).returning(Image.id, sort_by_parameter_order=True), image_rows).all()
        face_rows = [
            {"image_id": i, "bbox_x": 0, "bbox_y": 0, "bbox_w": 80, "bbox_h": 80, "detection_score": 1.0}
            | {"embedding_space": space, "user_confirmed": False}
            for i in image_ids
        ]
        face_ids = np.array(
            session.scalars(
                insert(FaceInstance).returning(FaceInstance.id, sort_by_parameter_order=True), face_rows
            ).all()
        )
        for person in np.unique(people[people >= 0]).tolist():
            row = Person(name=f"person {person}")
            session.add(row)
            session.flush()
            members = face_ids[people == person].tolist()
            faces = session.execute(
                select(FaceInstance.id, FaceInstance.person_id, FaceInstance.cluster_id).where(
                    FaceInstance.id.in_(members)
                )
            ).all()
            confirm_faces(session, faces, row.id, action="label_face")
    payloads = [
        {"image_id": int(i), "person_id": None, "cluster_id": noise_cluster_id(int(f))}
        for f, i in zip(face_ids, image_ids, strict=True)
    ]
    with context.vectors() as store:
        store.ensure_collection(space, dim)
        store.upsert(space, face_ids, vectors, payloads)
    return context


def run_case(case: str, context: Library, **config: object) -> TrainingReport:
    settings = context.settings
    train = training_params(settings)
    train = dataclasses.replace(train, **config) if config else train
    started = time.perf_counter()
    with context.vectors() as store:
        data = read_training_set(context, store)
    read_s = time.perf_counter() - started
    report = train_checkpoint(context, data, train)
    train_s = time.perf_counter() - started - read_s
    with context.vectors() as store:
        regenerated = regenerate_embeddings(context, store)
    regenerate_s = time.perf_counter() - started - read_s - train_s
    raw_tar, projected_tar = report.figures["TAR@FAR=0.001"]
    print(
        f"{case:34s} {data.label_count} labelled faces d={data.vectors.shape[1]}: read {read_s:.2f} s, train "
        f"{train_s:.2f} s ({len(report.losses)} epochs, best {report.best_epoch}, training loop {report.seconds:.2f} s "
        f"on {report.device}), regenerate {regenerate_s:.2f} s ({regenerated.projected} vectors, switched "
        f"{regenerated.switched}) | TAR@1e-3 {raw_tar:.3f} -> {projected_tar:.3f}, promote {report.promote}"
    )
    print(f"{'':34s} {report.reason}")
    print(
        f"{'':34s} thresholds raw {report.raw_thresholds} -> projected {report.thresholds} "
        f"({report.threshold_facts.get('threshold_rule')})"
    )
    figures = {
        "labelled_faces": data.label_count,
        "epochs_run": len(report.losses),
        "read_seconds": round(read_s, 3),
        "train_seconds": round(train_s, 3),
        "training_loop_seconds": round(report.seconds, 3),
        "regenerate_seconds": round(regenerate_s, 3),
        "raw_tar": round(raw_tar, 4),
        "projected_tar": round(projected_tar, 4),
        "promote": report.promote,
        "person_threshold": report.thresholds.threshold,
        "cluster_eps": report.thresholds.cluster_eps,
    }
    for metric, value in figures.items():
        emit("training", case=case, metric=metric, value=value)
    return report


def speed() -> None:
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch.optim's one-time import is not training
    for dim in (128, 512):
        vectors, people = nuisance_faces(1000, 10, dim)
        with tempfile.TemporaryDirectory() as tmp:
            context = build_library(Path(tmp), dim, vectors, people, calibrated_thresholds(vectors, people))
            run_case(f"10k_{dim}d_20_epochs", context, epochs=20, patience=20)
            run_case(f"10k_{dim}d_early_stopping", context, epochs=20)
            context.close()
    emit("training", case="speed", metric="peak_rss_mb", value=round(peak_rss_mb(), 1))


def lfw() -> None:
    data = lfw_dev_embeddings("dlib")
    _, person, counts = np.unique(data["identities"], return_inverse=True, return_counts=True)
    people = np.where(counts[person] >= 5, person, -1)
    with tempfile.TemporaryDirectory() as tmp:
        context = build_library(Path(tmp), 128, data["vectors"].astype(np.float32), people)
        run_case("lfw_dev_dlib_real", context)
        context.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["options"]:  # the ways of learning from labels side by side (issue 12)
        from benchmarks.learning_options import main as learning_options

        learning_options(sys.argv[2:])
        sys.exit(0)
    if sys.argv[1:2] == ["product"]:  # the product's matcher gate, raw vs learned (issue 12)
        from benchmarks.learning_replay import main as learning_replay

        learning_replay(
            sys.argv[2:] if "--options" in sys.argv else [*sys.argv[2:], "--options", "raw,boundaries,library,adaptive"]
        )
        sys.exit(0)
    parts = sys.argv[1:] or ["speed", "lfw"]
    if "speed" in parts:
        speed()
    if "lfw" in parts:
        lfw()
