"""Learning from labels: a small projection head on top of a frozen face model, trained with triplet loss.

The head maps a raw embedding (d = 512 for buffalo_l, 128 for dlib) to a new unit-length space where the
people the user named are pulled together and "not this person" rejections pushed apart. It is trained on
vectors only (the face model stays frozen), so the whole labelled set lives on the device as one tensor
and an epoch over 10K faces takes well under a second on a CPU core.

A trained head is only worth using if it beats the raw space on people it was not trained on, so
`train_projection` always measures both spaces on held-out people and returns `promote` with its reason
(the pipeline's own gate, `domain.promotion_gate`, comes on top in services/training.py). The head itself
is in `domain.projection_head`; checkpoint files are storage's (`storage.checkpoints`).

Shapes: n faces, d raw dimensions, o = `out_dim` projected dimensions.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from face_pipeline.domain.metrics import jsonable
from face_pipeline.domain.projection_head import (
    Architecture,
    Device,
    HeadSpec,
    ProjectionHead,
    project_tensor,
    resolve_device,
)
from face_pipeline.domain.triplets import PKSampler, batch_hard_triplet_loss
from face_pipeline.domain.verification import (
    UNLABELLED,
    EvaluationPlan,
    IdentitySplit,
    SpaceFigures,
    l2_normalise,
    split_by_identity,
)


class NotEnoughLabels(ValueError):
    """Too few people have enough labelled faces to train (and honestly validate) a projection."""


# --- configuration and result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingParams:
    """Hyper-parameters of `train_projection`; the FACE_* setting each mirrors is named beside it.

    Measured choices (synthetic 512-d faces with a shared nuisance subspace, 300 people; validation
    TAR@FAR=1e-3 of unseen people, raw 0.70): the residual head with a PCA skip starts at 0.72 (the raw
    space kept) and reaches 0.99 after one epoch at lr 1e-3; at the design note's 1e-4 it needs ~15
    epochs (0.79 after one, 0.96 after five); the plain MLP starts at 0.07 and tops out at 0.93-0.94.
    On real dlib lfw-dev faces no setting beat the raw space, and early stopping keeps epoch 0.
    """

    architecture: Architecture = "residual"
    hidden_dim: int = 256
    out_dim: int = 128
    margin: float = 0.2  # FACE_TRIPLET_MARGIN, in Euclidean distance between unit vectors (0..2)
    learning_rate: float = 1e-3  # FACE_LEARNING_RATE; the design note's 1e-4 barely moves in 20 epochs
    weight_decay: float = 0.0
    epochs: int = 20  # FACE_TRAINING_EPOCHS; an epoch draws about every training face once
    batch_size: int = 32  # FACE_BATCH_SIZE = P people x K faces (P = batch_size // faces_per_person)
    faces_per_person: int = 4
    max_rejections_per_batch: int = 16  # rejected faces added to a batch, beyond the P x K rows
    patience: int = 5  # epochs without a better validation TAR before stopping
    # Validation: people held out entirely, plus a share of the training people's photos.
    val_fraction: float = 0.25
    holdout_fraction: float = 0.2
    gallery_size: int = 3  # faces whose mean is a validation person's prototype
    far: float = 1e-3
    open_set_far: float = 0.01
    max_eval_pairs: int = 1_000_000
    # Gate (see `promotion_decision`).
    min_gain: float = 0.005
    gain_z: float = 2.0
    tolerance: float = 0.01
    # The design note's minimum: 5 people x 5 faces.
    min_people: int = 5
    min_faces_per_person: int = 5
    seed: int = 0
    device: Device = "auto"
    # torch CPU threads while training (restored after); None leaves torch's setting. The matrices are
    # tiny (32 x 512), so a second thread costs more in hand-offs than it brings: 20 epochs x 10K faces
    # at 512-d took 17 s on one thread and 103 s on two on the shared 2-core box.
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        checks = {
            "architecture": self.architecture in ("mlp", "residual"),
            "hidden_dim": self.hidden_dim >= 1,
            "out_dim": self.out_dim >= 1,
            "margin": 0.0 < self.margin <= 2.0,
            "learning_rate": 0.0 < self.learning_rate <= 1.0,
            "weight_decay": self.weight_decay >= 0.0,
            "epochs": self.epochs >= 1,
            "faces_per_person": self.faces_per_person >= 2,
            "batch_size": self.batch_size >= 2 * self.faces_per_person,
            "max_rejections_per_batch": self.max_rejections_per_batch >= 0,
            "patience": self.patience >= 1,
            "val_fraction": 0.0 < self.val_fraction < 1.0,
            "holdout_fraction": 0.0 <= self.holdout_fraction < 1.0,
            "gallery_size": self.gallery_size >= 1,
            "far": 0.0 < self.far < 1.0,
            "open_set_far": 0.0 < self.open_set_far < 1.0,
            "max_eval_pairs": self.max_eval_pairs >= 100,
            "min_people": self.min_people >= 4,
            "min_faces_per_person": self.min_faces_per_person >= 2,
            "device": self.device in ("auto", "cpu", "cuda"),
            "num_threads": self.num_threads is None or self.num_threads >= 1,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid TrainingParams: " + ", ".join(bad))

    @property
    def people_per_batch(self) -> int:
        return self.batch_size // self.faces_per_person


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 0 is the untrained head
    train_loss: float  # mean batch-hard triplet loss over the epoch (nan for epoch 0)
    active_fraction: float  # share of anchors still violating the margin
    val_tar: float  # TAR@FAR on the validation faces, the early-stopping metric


@dataclass
class TrainingResult:
    """A trained head, how it got there, and whether it beats the raw space on held-out people."""

    state_dict: dict[str, torch.Tensor]  # on the CPU, weights of the best epoch
    spec: HeadSpec
    params: TrainingParams
    history: list[EpochRecord]
    best_epoch: int
    raw: SpaceFigures
    projected: SpaceFigures
    promote: bool
    promote_reason: str
    seconds: float
    device: str
    split: IdentitySplit  # the faces trained on and the held-out ones the figures come from
    counts: dict[str, int] = field(default_factory=dict)

    def head(self) -> ProjectionHead:
        head = ProjectionHead(self.spec)
        head.load_state_dict(self.state_dict)
        return head.eval()

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (also the checkpoint's metadata body)."""
        return jsonable(
            {
                "spec": dataclasses.asdict(self.spec),
                "config": dataclasses.asdict(self.params),
                "history": [dataclasses.asdict(r) for r in self.history],
                "best_epoch": self.best_epoch,
                "raw": dataclasses.asdict(self.raw),
                "projected": dataclasses.asdict(self.projected),
                "promote": self.promote,
                "promote_reason": self.promote_reason,
                "seconds": self.seconds,
                "device": self.device,
                "counts": self.counts,
            }
        )


# --- the gate -------------------------------------------------------------------------------------------


def promotion_decision(
    raw: SpaceFigures,
    projected: SpaceFigures,
    *,
    min_gain: float = 0.005,
    tolerance: float = 0.01,
    z: float = 2.0,
) -> tuple[bool, str]:
    """Promote the projection only if, on faces never trained on, all of these hold:

    1. verification TAR@FAR over all validation faces rises by at least max(`min_gain`, z standard
       errors of the raw TAR, sqrt(t(1-t)/genuine pairs)): the best epoch was picked on these same
       faces, so a gain inside the noise is not a gain; small validation sets must show a large one;
    2. nearest-prototype accuracy does not fall;
    3. TAR@FAR among validation people alone (people never labelled) falls by at most `tolerance`,
       so a head that helps the labelled people at everyone else's expense is refused.
    """
    tar_raw, tar_proj = raw.verification.tar, projected.verification.tar
    acc_raw, acc_proj = raw.identification.accuracy, projected.identification.accuracy
    unseen_raw, unseen_proj = raw.verification_unseen.tar, projected.verification_unseen.tar
    noise = z * math.sqrt(max(tar_raw * (1.0 - tar_raw), 0.0) / max(raw.verification.n_genuine, 1))
    required = max(min_gain, noise) if math.isfinite(noise) else min_gain
    figures = (
        f"TAR@FAR={raw.verification.far:g} {tar_raw:.3f} -> {tar_proj:.3f}, "
        f"prototype accuracy {acc_raw:.3f} -> {acc_proj:.3f}, "
        f"unseen-people TAR {unseen_raw:.3f} -> {unseen_proj:.3f}"
    )
    failures = []
    if not tar_proj >= tar_raw + required:  # `not >=` so that nan fails
        failures.append(f"TAR gain below {required:.3f}")
    if not acc_proj >= acc_raw:
        failures.append("prototype accuracy fell")
    if not math.isnan(unseen_raw) and not unseen_proj >= unseen_raw - tolerance:
        failures.append(f"unseen-people TAR fell by more than {tolerance:g}")
    if failures:
        return False, "kept raw space: " + "; ".join(failures) + f" ({figures})"
    return True, f"projection beats raw space ({figures})"


# --- training -------------------------------------------------------------------------------------------


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_enough_labels(person_labels: np.ndarray, min_people: int = 5, min_faces: int = 5) -> int:
    """Number of people with `min_faces`+ labelled faces; raises `NotEnoughLabels` below `min_people`."""
    labels = np.asarray(person_labels)
    _, counts = np.unique(labels[labels != UNLABELLED], return_counts=True)
    n_people = int((counts >= min_faces).sum())
    if n_people < min_people:
        raise NotEnoughLabels(
            f"need at least {min_people} people with {min_faces}+ labelled faces each; "
            f"have {n_people} people with {min_faces}+ faces"
        )
    return n_people


def _validate_inputs(
    vectors: np.ndarray, person_labels: np.ndarray, rejections: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"vectors must be a non-empty (n, d) array, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain nan or inf")
    labels = np.asarray(person_labels)
    if labels.shape != (vectors.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"person_labels must be ({vectors.shape[0]},) integers (-1 = unlabelled), got {labels.dtype} {labels.shape}"
        )
    if (labels < UNLABELLED).any():
        raise ValueError(f"person labels must be >= 0, or {UNLABELLED} for unlabelled faces")
    rej = np.zeros((0, 2), np.int64) if rejections is None else np.asarray(rejections, np.int64)
    if rej.size and (rej.ndim != 2 or rej.shape[1] != 2):
        raise ValueError(f"rejections must be (m, 2) rows of (face index, person label), got {rej.shape}")
    rej = rej.reshape(-1, 2)
    if rej.size and (rej[:, 0].min() < 0 or rej[:, 0].max() >= vectors.shape[0]):
        raise ValueError(f"a rejection names a face index outside 0..{vectors.shape[0] - 1}")
    return l2_normalise(vectors), labels.astype(np.int64), rej


def train_projection(
    vectors: np.ndarray,
    person_labels: np.ndarray,
    rejections: np.ndarray | None = None,
    params: TrainingParams | None = None,
) -> TrainingResult:
    """Train a projection head on labelled faces and measure it against the raw space.

    vectors: (n, d) float, raw embeddings (normalised here). person_labels: (n,) int, -1 = unlabelled
    (such faces only matter as targets of rejections). rejections: (m, 2) int rows (face index i,
    person label p) meaning "face i is not person p"; they become negatives for p's anchors.
    People are split into training and validation people (`split_by_identity`); the validation faces
    are never trained on, including as rejection negatives, so the gate stays honest.

    Raises NotEnoughLabels below `params.min_people` people with `params.min_faces_per_person`+ faces.
    Same inputs and seed give bitwise the same weights on the same device and thread count.
    """
    params = params or TrainingParams()
    started = time.perf_counter()
    x_np, labels, rej = _validate_inputs(vectors, person_labels, rejections)
    n_eligible = check_enough_labels(labels, params.min_people, params.min_faces_per_person)
    device = resolve_device(params.device)

    split = split_by_identity(
        labels,
        params.val_fraction,
        params.seed,
        holdout_fraction=params.holdout_fraction,
        gallery_size=params.gallery_size,
    )
    plan = EvaluationPlan.build(
        split,
        labels,
        far=params.far,
        open_set_far=params.open_set_far,
        max_pairs=params.max_eval_pairs,
        seed=params.seed,
    )
    # A rejection may not pull a validation face into training, nor contradict a label (label wins).
    usable = ~np.isin(rej[:, 0], split.evaluation) & (labels[rej[:, 0]] != rej[:, 1])
    rej = rej[usable]

    with _torch_threads(params.num_threads):
        x = torch.from_numpy(x_np).to(device)
        spec = HeadSpec(x_np.shape[1], params.out_dim, params.hidden_dim, params.architecture)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(params.seed)
            head = ProjectionHead(spec)
        head.init_skip_(torch.from_numpy(x_np[split.train]))
        head.to(device)
        sampler = PKSampler(
            split.train,
            labels[split.train],
            params.people_per_batch,
            params.faces_per_person,
            rejections=rej,
            face_labels=labels,
            max_rejections_per_batch=params.max_rejections_per_batch,
            seed=params.seed,
        )
        history, best_epoch, best_state = _fit(head, x, sampler, plan, params, device)
        head.load_state_dict(best_state)
        projected_np = project_tensor(head, x).cpu().numpy()

    raw_figures = plan.evaluate(x_np, labels)
    projected_figures = plan.evaluate(projected_np, labels)
    promote, reason = promotion_decision(
        raw_figures, projected_figures, min_gain=params.min_gain, tolerance=params.tolerance, z=params.gain_z
    )
    return TrainingResult(
        state_dict={k: v.detach().cpu().clone() for k, v in best_state.items()},
        spec=spec,
        params=params,
        history=history,
        best_epoch=best_epoch,
        raw=raw_figures,
        projected=projected_figures,
        promote=promote,
        promote_reason=reason,
        seconds=time.perf_counter() - started,
        device=str(device),
        split=split,
        counts={
            "labelled_faces": int((labels != UNLABELLED).sum()),
            "people": int(np.unique(labels[labels != UNLABELLED]).size),
            "people_with_min_faces": n_eligible,
            "train_faces": int(sampler.n_faces),
            "train_people": int(split.train_people.size),
            "holdout_faces": int(split.holdout.size),
            "val_people": int(split.val_people.size),
            "val_faces": int(split.unseen.size),
            "rejections_given": int(0 if rejections is None else np.asarray(rejections).reshape(-1, 2).shape[0]),
            "rejections_used": sampler.n_rejections,
        },
    )


def _fit(
    head: ProjectionHead,
    x: torch.Tensor,
    sampler: PKSampler,
    plan: EvaluationPlan,
    params: TrainingParams,
    device: torch.device,
) -> tuple[list[EpochRecord], int, dict[str, torch.Tensor]]:
    """The epoch loop with early stopping on validation TAR@FAR. Returns (history, best epoch, best weights)."""
    # fused: one kernel for all parameters; measured 1.9 ms per step vs 2.8 ms (512-d head, one CPU thread).
    optimiser = torch.optim.Adam(
        head.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay, fused=True
    )
    evaluation = torch.from_numpy(plan.split.evaluation).to(device)

    def val_tar() -> float:
        return plan.verification(project_tensor(head, x[evaluation]).cpu().numpy()).tar

    best_tar = val_tar()
    history = [EpochRecord(0, float("nan"), float("nan"), best_tar)]
    best_epoch, best_state = 0, {k: v.detach().clone() for k, v in head.state_dict().items()}
    head.train()
    for epoch in range(1, params.epochs + 1):
        loss_sum = torch.zeros((), device=device)
        active = torch.zeros((), device=device)
        valid = torch.zeros((), device=device)
        for batch in sampler.epoch():
            out = batch_hard_triplet_loss(
                head(x[batch.indices.to(device)]),
                batch.labels.to(device),
                params.margin,
                rejected_from=batch.rejected_from.to(device),
                n_anchors=batch.n_anchors,
            )
            optimiser.zero_grad(set_to_none=True)
            out.loss.backward()
            optimiser.step()
            loss_sum += out.loss.detach()
            active += out.n_active
            valid += out.n_valid
        tar = val_tar()
        history.append(EpochRecord(epoch, float(loss_sum) / len(sampler), float(active / valid.clamp(min=1)), tar))
        if tar > best_tar:
            best_tar, best_epoch = tar, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= params.patience:
            break
    return history, best_epoch, best_state
