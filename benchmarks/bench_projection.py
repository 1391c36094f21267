"""Projection head: training speed on synthetic faces, and raw vs projected figures on real dlib faces.

    .venv/bin/python benchmarks/bench_projection.py            # both parts
    .venv/bin/python benchmarks/bench_projection.py speed      # 20 epochs x 10K labelled faces, 128-d and 512-d
    .venv/bin/python benchmarks/bench_projection.py lfw        # needs .cache/lfw-dev-dlib.npz

The lfw part labels the people with 5+ photos (as a user would), trains, and reports the held-out
figures raw vs projected, plus the effect on the people it never saw a label of (fewer than 5 photos).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import lfw_dev_embeddings  # noqa: E402
from face_pipeline.domain.projection import TrainingParams, TrainingResult, train_projection  # noqa: E402
from face_pipeline.domain.projection_head import project  # noqa: E402
from face_pipeline.domain.verification import l2_normalise, pair_scores, sample_pairs, tar_at_far  # noqa: E402
from face_pipeline_eval.synthetic import nuisance_faces  # noqa: E402


def line(name: str, r: TrainingResult) -> str:
    raw, proj = r.raw, r.projected
    return (
        f"{name:28s} {r.seconds:5.1f}s epochs={len(r.history) - 1:2d} best={r.best_epoch:2d} | "
        f"TAR@1e-3 {raw.verification.tar:.3f}->{proj.verification.tar:.3f} "
        f"unseen {raw.verification_unseen.tar:.3f}->{proj.verification_unseen.tar:.3f} | "
        f"proto acc {raw.identification.accuracy:.3f}->{proj.identification.accuracy:.3f} "
        f"(unseen {raw.identification.accuracy_unseen:.3f}->{proj.identification.accuracy_unseen:.3f}) "
        f"open-set@1% {raw.identification.open_set_rate:.3f}->{proj.identification.open_set_rate:.3f} | "
        f"promote={r.promote}"
    )


def speed() -> None:
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch.optim's one-time import (~2 s) is not training
    for dim in (128, 512):
        x, labels = nuisance_faces(1000, 10, dim)
        config = TrainingParams(epochs=20, patience=20, device="cpu", num_threads=1)
        started = time.perf_counter()
        result = train_projection(x, labels, params=config)
        seconds = time.perf_counter() - started
        print(
            f"speed: 20 epochs, {result.counts['train_faces']} training faces of {x.shape[0]} labelled, d={dim}, "
            f"1 CPU thread: {seconds:.1f} s (with per-epoch validation on {result.counts['holdout_faces']} + "
            f"{result.counts['val_faces']} faces)"
        )


def lfw() -> None:
    data = lfw_dev_embeddings("dlib")
    vectors = data["vectors"]
    _, person, counts = np.unique(data["identities"], return_inverse=True, return_counts=True)
    labelled = counts[person] >= 5
    labels = np.where(labelled, person, -1)
    print(
        f"lfw-dev dlib: {vectors.shape[0]} faces, {np.unique(person).size} people; labelled: "
        f"{int(labelled.sum())} faces of {int((counts >= 5).sum())} people with 5+ photos"
    )
    # People never labelled (fewer than 5 photos): do their pairs get worse in the projected space?
    never = np.flatnonzero(~labelled)
    i, j, same = sample_pairs(person[never], 1_000_000, np.random.default_rng(0))

    def never_labelled(space: np.ndarray) -> str:
        scores = pair_scores(l2_normalise(space)[never], i, j)
        return " ".join(f"TAR@{far:g}={tar_at_far(scores, same, far).tar:.3f}" for far in (1e-3, 1e-2))

    print(
        f"never-labelled people ({int(same.sum())} genuine / {int((~same).sum())} impostor pairs): "
        f"raw {never_labelled(vectors)}"
    )
    base = TrainingParams(device="cpu", num_threads=1)
    runs = {
        "default (residual, lr 1e-3)": base,
        "residual, lr 1e-4": replace(base, learning_rate=1e-4),
        "design note (mlp, lr 1e-4)": replace(base, architecture="mlp", learning_rate=1e-4),
        "mlp, lr 1e-3": replace(base, architecture="mlp", learning_rate=1e-3),
        "default, split seed 1": replace(base, seed=1),
        "default, split seed 2": replace(base, seed=2),
    }
    for name, config in runs.items():
        result = train_projection(vectors, labels, params=config)
        print(line(name, result))
        print(f"{'':28s} never-labelled people: projected {never_labelled(project(vectors, result.head()))}")
        curve = " ".join(f"{r.val_tar:.3f}" for r in result.history)
        print(f"{'':28s} validation TAR by epoch (0 = untrained): {curve}")


if __name__ == "__main__":
    parts = sys.argv[1:] or ["speed", "lfw"]
    if "speed" in parts:
        speed()
    if "lfw" in parts:
        lfw()
