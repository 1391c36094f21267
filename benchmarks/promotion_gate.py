"""Does a trained projection help the pipeline itself? Raw vs projected on real dlib faces (lfw-dev).

    .venv/bin/python benchmarks/promotion_gate.py      # needs .cache/lfw-dev-dlib.npz (built by the tests)
    .venv/bin/python benchmarks/promotion_gate.py "margin 0.1" "mlp (design note)"   # other heads

A library as a user leaves it: every person with 5+ photos is named from the first 60% of their photos;
the rest of their photos must be found, and everyone with fewer photos is a stranger. A head is trained
on the names; then the whole library is assigned and grouped, raw at the raw thresholds and projected at
the thresholds training chose. Also printed: the gate's verdict and its own figures on held-out people,
which are what a user's library cannot show before the switch. One JSON line per space.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import lfw_dev_embeddings  # noqa: E402
from face_pipeline.domain.assignment import thresholds_for_space  # noqa: E402
from face_pipeline.domain.metrics import PipelineFigures  # noqa: E402
from face_pipeline.domain.projection import TrainingParams, train_projection  # noqa: E402
from face_pipeline.domain.projection_head import project  # noqa: E402
from face_pipeline.domain.promotion_gate import PipelineRoles, pipeline_figures  # noqa: E402
from face_pipeline.domain.verification import UNLABELLED, l2_normalise  # noqa: E402
from face_pipeline.services.training import TrainingSet, gate_on_pipeline  # noqa: E402


def library_roles(person: np.ndarray, counts: np.ndarray, share: float = 0.6) -> tuple[PipelineRoles, np.ndarray]:
    """(roles over the whole library, (n,) training labels: the named faces' people, -1 elsewhere)."""
    named_person = counts[person] >= 5
    rank = np.zeros(person.size, dtype=np.int64)
    order = np.argsort(person, kind="stable")
    _, first, sizes = np.unique(person[order], return_index=True, return_counts=True)
    rank[order] = np.arange(person.size) - np.repeat(first, sizes)
    named_face = named_person & (rank < np.ceil(share * counts[person]))
    roles = PipelineRoles(
        gallery=np.flatnonzero(named_face),
        queries=np.flatnonzero(named_person & ~named_face),
        strangers=np.flatnonzero(~named_person),
    )
    return roles, np.where(named_face, person, UNLABELLED)


def show(name: str, f: PipelineFigures, extra: dict[str, object]) -> None:
    print(
        f"{name:34s} precision {f.precision:.3f} recall {f.recall:.3f} FA/1000 {f.false_accepts_per_1000:5.1f} "
        f"purity {f.purity:.3f} grouped {f.grouped:.3f}"
    )
    print(json.dumps({"bench": "pipeline_gate", "space": name, **f.as_dict(), **extra}))


def main() -> None:
    data = lfw_dev_embeddings("dlib")
    vectors = l2_normalise(data["vectors"])
    _, person, counts = np.unique(data["identities"], return_inverse=True, return_counts=True)
    roles, labels = library_roles(person, counts)
    raw_thresholds = thresholds_for_space("dlib_resnet_v1")
    print(
        f"lfw-dev dlib: {vectors.shape[0]} faces; named {roles.gallery.size} faces of "
        f"{np.unique(labels[labels >= 0]).size} people; to find {roles.queries.size}; strangers {roles.strangers.size}"
    )
    show("raw", pipeline_figures(vectors, person, roles, raw_thresholds), {"thresholds": raw_thresholds.__dict__})

    base = TrainingParams(device="cpu", num_threads=1)
    variants = {
        "default": base,
        "split seed 1": replace(base, seed=1),
        "margin 0.1": replace(base, margin=0.1),
        "lr 3e-4, 40 epochs": replace(base, learning_rate=3e-4, epochs=40, patience=40),
        "mlp (design note)": replace(base, architecture="mlp"),
    }
    chosen = sys.argv[1:] or ["default", "split seed 1"]
    for config_name, config in ((name, variants[name]) for name in chosen):
        named = labels != UNLABELLED
        data_set = TrainingSet(
            base_space="dlib_resnet_v1",
            model_name="dlib_resnet_v1",
            base_thresholds=raw_thresholds,
            face_ids=np.flatnonzero(named).astype(np.int64),
            vectors=vectors[named],
            labels=labels[named],
            person_ids=np.unique(labels[named]).astype(object),
            rejections=np.empty((0, 2), np.int64),
            library_sample=data["vectors"][~named],  # the unnamed faces, raw, as read_training_set samples them
        )
        result = train_projection(data_set.vectors, data_set.labels, params=config)
        verdict = gate_on_pipeline(data_set, result, min_cluster_size=3)
        projected = project(vectors, result.head())
        figures = pipeline_figures(projected, person, roles, verdict.projected)
        show(
            f"projected ({config_name})",
            figures,
            {"thresholds": verdict.projected.__dict__, "promoted": verdict.promote, "tar_gate": result.promote},
        )
        print(f"{'':34s} gate: {verdict.reason}")


if __name__ == "__main__":
    main()
