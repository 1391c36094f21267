"""P x K batches and batch-hard triplet mining, with "not this person" rejections as extra negatives.

Batch-hard (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", 2017): each batch holds P people
with K faces each; every face is an anchor, its positive is the farthest face of the same person in the
batch and its negative the nearest face of anyone else. A user's "not this person" is the most
informative negative there is (the model once confused them), so faces rejected from a person in the
batch ride along as extra rows that are negatives for that person's anchors only: an unlabelled face
rejected from Alice says nothing about Bob.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NO_PERSON = -1  # label of a row that is nobody's positive: an unlabelled face, or "not rejected"


@dataclass(frozen=True)
class PKBatch:
    """Rows of one batch: face indices into the training tensor and what each row means.

    The first `n_anchors` rows are the P x K faces; any rows after them are rejected faces.
    """

    indices: torch.Tensor  # (B,) int64
    labels: torch.Tensor  # (B,) int64, person label or NO_PERSON
    rejected_from: torch.Tensor  # (B,) int64, the person this row was rejected from, or NO_PERSON
    n_anchors: int


class PKSampler:
    """Seeded P x K batches over the faces of people with at least two training faces.

    An epoch is ceil(faces / (P * K)) batches, so every face is seen about once per epoch whatever P and
    K are. People are drawn as concatenated random permutations (each person once before anyone twice);
    the v-th visit to a person takes faces v*K .. v*K+K-1 of that person's shuffled list, cycling when the
    person has fewer faces, so faces are drawn without replacement as far as possible.

    face_indices: (t,) int, rows of the training tensor. labels: (t,) int >= 0, their people.
    rejections: (m, 2) int rows of (face index, person label) saying that face is not that person.
    """

    def __init__(
        self,
        face_indices: np.ndarray,
        labels: np.ndarray,
        people_per_batch: int,
        faces_per_person: int,
        *,
        rejections: np.ndarray | None = None,
        face_labels: np.ndarray | None = None,
        max_rejections_per_batch: int = 32,
        seed: int = 0,
    ) -> None:
        if people_per_batch < 2 or faces_per_person < 2:
            raise ValueError(f"a P x K batch needs P >= 2 and K >= 2, got P={people_per_batch}, K={faces_per_person}")
        face_indices, labels = np.asarray(face_indices, np.int64), np.asarray(labels, np.int64)
        people, counts = np.unique(labels, return_counts=True)
        keep = np.isin(labels, people[counts >= 2])  # a face alone has no positive
        order = np.argsort(labels[keep], kind="stable")
        self._faces = torch.from_numpy(face_indices[keep][order])
        self._people, self._counts = np.unique(labels[keep], return_counts=True)
        self._first = torch.from_numpy(np.concatenate([[0], np.cumsum(self._counts)[:-1]]))
        self._counts_t = torch.from_numpy(self._counts)
        self._group_of_face = torch.repeat_interleave(torch.arange(self._people.size), self._counts_t)
        if self._people.size < 2:
            raise ValueError("P x K batches need at least two people with two or more training faces")
        self.people_per_batch = min(people_per_batch, int(self._people.size))
        self.faces_per_person = faces_per_person
        self.max_rejections_per_batch = max_rejections_per_batch
        self._generator = torch.Generator().manual_seed(seed)

        # Rejections are kept for training people only, keyed by the person's group number.
        self._rej_face = torch.zeros(0, dtype=torch.int64)
        self._rej_group = torch.zeros(0, dtype=torch.int64)
        self._rej_label = torch.zeros(0, dtype=torch.int64)
        if rejections is not None and len(rejections):
            rejections = np.asarray(rejections, np.int64).reshape(-1, 2)
            usable = np.isin(rejections[:, 1], self._people)
            rejections = rejections[usable]
            self._rej_face = torch.from_numpy(rejections[:, 0].copy())
            self._rej_group = torch.from_numpy(np.searchsorted(self._people, rejections[:, 1]))
            known = face_labels[rejections[:, 0]] if face_labels is not None else None
            self._rej_label = (
                torch.from_numpy(np.asarray(known, np.int64))
                if known is not None
                else torch.full((rejections.shape[0],), NO_PERSON, dtype=torch.int64)
            )

    @property
    def n_faces(self) -> int:
        return int(self._faces.numel())

    @property
    def n_rejections(self) -> int:
        """Rejections that can reach a batch: their person is a training person."""
        return int(self._rej_face.numel())

    def __len__(self) -> int:
        """Batches per epoch."""
        return max(1, -(-self.n_faces // (self.people_per_batch * self.faces_per_person)))

    def epoch(self) -> Iterator[PKBatch]:
        """The batches of one epoch; the sampler's generator advances, so the next epoch differs."""
        g, P, K = self._generator, self.people_per_batch, self.faces_per_person
        n_groups = self._people.size
        # Shuffle each person's faces: a random permutation, then a stable sort back into person blocks.
        perm = torch.randperm(self.n_faces, generator=g)
        shuffled = perm[torch.argsort(self._group_of_face[perm], stable=True)]
        faces = self._faces[shuffled]

        n_slots = len(self) * P
        n_perms = -(-n_slots // n_groups)
        schedule = torch.cat([torch.randperm(n_groups, generator=g) for _ in range(n_perms)])[:n_slots]
        visit = torch.arange(n_slots) // n_groups
        offsets = (visit[:, None] * K + torch.arange(K)) % self._counts_t[schedule][:, None]  # (slots, K)
        rows = faces[self._first[schedule][:, None] + offsets]  # (slots, K)
        people = torch.from_numpy(self._people)
        labels = people[schedule][:, None].expand(-1, K)

        for b in range(len(self)):
            groups = schedule[b * P : (b + 1) * P]
            indices, batch_labels = rows[b * P : (b + 1) * P].reshape(-1), labels[b * P : (b + 1) * P].reshape(-1)
            extra_face, extra_label, extra_from = self._rejections_for(groups)
            yield PKBatch(
                indices=torch.cat([indices, extra_face]),
                labels=torch.cat([batch_labels, extra_label]),
                rejected_from=torch.cat([torch.full_like(batch_labels, NO_PERSON), people[extra_from]]),
                n_anchors=int(indices.numel()),
            )

    def _rejections_for(self, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Up to `max_rejections_per_batch` rejections of the batch's people, drawn at random."""
        empty = torch.zeros(0, dtype=torch.int64)
        if self._rej_face.numel() == 0 or self.max_rejections_per_batch == 0:
            return empty, empty, empty
        hits = torch.nonzero(torch.isin(self._rej_group, groups)).flatten()
        if hits.numel() > self.max_rejections_per_batch:
            pick = torch.randperm(hits.numel(), generator=self._generator)[: self.max_rejections_per_batch]
            hits = hits[pick]
        return self._rej_face[hits], self._rej_label[hits], self._rej_group[hits]


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between unit rows (B, D) -> (B, B); sqrt(2 - 2 cos), kept off 0 for the gradient."""
    sims = embeddings @ embeddings.T
    return torch.sqrt(torch.clamp(2.0 - 2.0 * sims, min=1e-12))


def triplet_masks(labels: torch.Tensor, rejected_from: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which (anchor, other) cells are valid positives and negatives. Both (B, B) bool.

    positive: same person, not the same row. negative: both labelled and different people, or the other
    row was rejected from the anchor's person (whatever the other row's own label).
    """
    labelled = labels != NO_PERSON
    same = labels[:, None] == labels[None, :]
    both = labelled[:, None] & labelled[None, :]
    eye = torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)
    positive = same & both & ~eye
    negative = both & ~same
    if rejected_from is not None:
        rejected = (rejected_from[None, :] == labels[:, None]) & labelled[:, None]
        negative |= rejected
        positive &= ~rejected
    return positive, negative


@dataclass(frozen=True)
class MinedTriplets:
    """The batch-hard choice for each anchor row."""

    positive: torch.Tensor  # (A,) int64, row of the hardest (farthest) positive
    negative: torch.Tensor  # (A,) int64, row of the hardest (nearest) negative
    valid: torch.Tensor  # (A,) bool, the anchor has both a positive and a negative


def mine_batch_hard(
    distances: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, n_anchors: int | None = None
) -> MinedTriplets:
    """Hardest positive and negative per anchor. distances, masks: (B, B); anchors are the first rows."""
    rows = slice(0, n_anchors)
    d, pos, neg = distances[rows], positive[rows], negative[rows]
    hardest_pos = torch.where(pos, d, torch.full_like(d, -1.0)).argmax(dim=1)
    hardest_neg = torch.where(neg, d, torch.full_like(d, float("inf"))).argmin(dim=1)
    return MinedTriplets(hardest_pos, hardest_neg, pos.any(dim=1) & neg.any(dim=1))


@dataclass(frozen=True)
class TripletLossOutput:
    loss: torch.Tensor  # scalar, mean hinge over valid anchors (0 with grad when none)
    n_active: torch.Tensor  # scalar, valid anchors whose triplet still violates the margin
    n_valid: torch.Tensor  # scalar, anchors with both a positive and a negative in the batch


def batch_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    *,
    rejected_from: torch.Tensor | None = None,
    n_anchors: int | None = None,
) -> TripletLossOutput:
    """mean over anchors of max(0, margin + d(a, hardest p) - d(a, hardest n)).

    embeddings: (B, D) unit rows; labels: (B,) with NO_PERSON for rows that are only negatives;
    rejected_from: (B,) person each row was rejected from, or NO_PERSON.
    """
    distances = pairwise_distances(embeddings)
    positive, negative = triplet_masks(labels, rejected_from)
    mined = mine_batch_hard(distances, positive, negative, n_anchors)
    anchors = torch.arange(mined.positive.numel(), device=embeddings.device)
    hinge = F.relu(margin + distances[anchors, mined.positive] - distances[anchors, mined.negative])
    # Counts stay tensors: reading them back every step would stall a GPU.
    valid = mined.valid.to(hinge.dtype)
    n_valid = valid.sum()
    loss = (hinge * valid).sum() / n_valid.clamp(min=1.0)
    return TripletLossOutput(loss, ((hinge > 0) & mined.valid).sum(), n_valid)
