"""The learned matcher of the active space: refitted and gated by the person_centroids step when the labels
change, used by the supervised_assignments step when the gate allows it and no pin forbids it.

Why here and not as a checkpoint of the retrain job: the matcher is a function of the labels themselves (no
vector is regenerated), it takes seconds to fit, and a matcher trained at the last retrain would not know the
people named since. So every person_centroids run whose labels (confirmed faces, rejections) or raw threshold
changed fits it on all of them and judges it (`domain/learned_matching.judge_matcher`, cross-fitted on the
labels). A learned-scale matcher (library, adaptive) the gate lets in gets its threshold raised until it names
no more of the library's isolated unnamed faces (no other face within the space's grouping distance: mostly
people seen once, whom the gate's held-out people, all photographed several times, do not stand for) than raw
matching does: without that, on the evaluation's dlib library the library matcher named 4.2% of the one-off
strangers (raw: 0.3%). The boundaries matcher scores raw cosines at raw matching's own calibrated threshold, so
its threshold is not raised; for every kind, a matcher that names no more of the library's unnamed faces than
raw matching is refused ("no gain to expect"). The verdict (used or kept raw, the reason, the held-out figures,
the raise) is kept in pipeline_state under `learned_matcher:<space>`; an adaptive matcher is stored under
`$FACE_DATA_DIR/matchers`, the boundaries and library matchers are refitted when used (they need the whole
library as context).

Used only when FACE_LEARNED_MATCHING is on, the gate said so for exactly the labels and raw threshold in
force, and the user has not pinned the raw space (`faces reassign` without `--use-trained-model`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from face_pipeline.domain.assignment import PersonScorer, Prototypes, assign_to_known_people, build_prototypes
from face_pipeline.domain.boundary_matching import BoundaryMatcher
from face_pipeline.domain.learned_matching import (
    NO_PERSON,
    MatcherFit,
    boundary_matcher_fit,
    fit_person_matcher,
    isolated_face_offset,
    judge_matcher,
    library_matcher_fit,
)
from face_pipeline.domain.neighbors import knn_graph
from face_pipeline.domain.neighbour_averaging import DEFAULT_NEIGHBOURS
from face_pipeline.domain.person_matching import PersonMatcher
from face_pipeline.services.learned_matcher_state import state_key, stored_verdict
from face_pipeline.services.library import Library
from face_pipeline.services.space_switch import read_pin
from face_pipeline.storage.models import FaceInstance, FaceRejection, PipelineState, utcnow
from face_pipeline.storage.vectors import VectorStore

log = logging.getLogger(__name__)

KINDS = {
    "boundaries": "raw cosine scores, self-trained exemplars + per-person logistic boundaries (BoundaryMatcher)",
    "library": "adaptive score normalisation + library neighbour averaging (LibraryMatcher)",
    "adaptive": "adaptive score normalisation (PersonMatcher)",
}
_VERSION = "6"  # bump when the fit or the gate changes: stored verdicts are then judged again


@dataclass(frozen=True)
class RunMatcher:
    """What one supervised_assignments run matches with: a scorer on its own scale, or raw (scorer None)."""

    scorer: PersonScorer | None
    threshold: float
    margin: float
    reason: str  # one line: which matching and why
    tag: str = ""  # digest of the matcher in use ("" for raw): part of the assignment fingerprint


def _labels(session: Session) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(face ids, person ids or None, image ids) of the confirmed faces and of the faces with a rejection,
    ids ascending, and the rejections (face id, person id)."""
    rejections = [
        (int(f), str(p)) for f, p in session.execute(select(FaceRejection.face_id, FaceRejection.person_id)).all()
    ]
    rows = session.execute(
        select(FaceInstance.id, FaceInstance.person_id, FaceInstance.image_id, FaceInstance.user_confirmed)
        .where(
            or_(
                (FaceInstance.user_confirmed.is_(True)) & FaceInstance.person_id.is_not(None),
                FaceInstance.id.in_(select(FaceRejection.face_id)),
            )
        )
        .order_by(FaceInstance.id)
    ).all()
    face_ids = np.array([r.id for r in rows], dtype=np.int64)
    people = np.array([r.person_id if r.user_confirmed else None for r in rows], dtype=object)
    images = np.array([r.image_id for r in rows], dtype=np.int64)
    return face_ids, people, images, rejections


def _digest(
    kind: str,
    space: str,
    threshold: float,
    margin: float,
    face_ids: np.ndarray,
    people: np.ndarray,
    rejections: list[tuple[int, str]],
) -> str:
    digest = hashlib.sha256(f"{_VERSION}\x00{kind}\x00{space}\x00{threshold!r}\x00{margin!r}\x00".encode())
    digest.update(face_ids.tobytes())
    digest.update("\x00".join(map(str, people.tolist())).encode())
    digest.update("\x00".join(f"{f}:{p}" for f, p in sorted(rejections)).encode())
    return digest.hexdigest()


def _matcher_dir(library: Library) -> Path:
    return library.settings.data_dir / "matchers"


def refresh_matcher(
    library: Library,
    session: Session,
    vectors: VectorStore,
    space: str,
    threshold: float,
    margin: float,
    cluster_eps: float | None = None,
) -> dict[str, Any]:
    """Fit and judge the matcher when the labels or the raw threshold changed since the last verdict; returns
    the stored verdict (`use`, `reason`, figures, `seconds`, `reused`)."""
    started = time.perf_counter()
    face_ids, people, images, rejections = _labels(session)
    kind = library.settings.learned_matcher
    digest = _digest(kind, space, threshold, margin, face_ids, people, rejections)
    row = session.get(PipelineState, state_key(space))
    if row is not None and row.value.get("digest") == digest:
        return {**row.value, "reused": True}
    names = np.array(sorted({p for p in people.tolist() if p is not None}), dtype=object)
    labels, rej = _label_rows(face_ids, people, rejections, names)
    named = labels != NO_PERSON
    matrix = vectors.fetch(space, face_ids) if len(face_ids) else np.zeros((0, 0), np.float32)
    guarded = len(face_ids) > 0 and (kind in _NEEDS_LIBRARY or cluster_eps is not None)
    context = _library_context(vectors, space) if guarded else None  # read once: the fit and the guard use it
    fit = _fit_for(kind, context, face_ids, threshold, margin)
    verdict = judge_matcher(matrix, labels, images, rej, threshold, margin, fit=fit) if len(face_ids) else None
    value: dict[str, Any] = {
        "digest": digest,
        "space": space,
        "kind": kind,
        "matcher": KINDS[kind],
        "raw_threshold": threshold,
        "raw_margin": margin,
        "at": f"{utcnow():%Y-%m-%d %H:%M} UTC",
        "labelled_faces": int(named.sum()),
        "people": len(names),
        "rejections": len(rej),
    }
    if verdict is None:
        value.update(use=False, reason="kept raw matching: no labels yet", file=None)
    else:
        value.update(verdict.as_json(), file=None)
        if verdict.use:
            value["gate_threshold"] = float(verdict.threshold)
        if verdict.use and cluster_eps is not None and context is not None:
            guard = _isolated_guard(
                context,
                face_ids,
                matrix,
                labels,
                verdict.matcher,
                verdict.threshold,
                verdict.margin,
                threshold,
                margin,
                cluster_eps,
            )
            value["threshold"] = float(verdict.threshold + guard["raised_by"])
            value["cluster_eps"] = float(cluster_eps)
            value["isolated"] = guard
            refused = _no_gain(guard)
            if refused:
                value.update(use=False, reason=f"kept raw matching ({refused}); the gate: {value['reason']}")
            else:
                value["reason"] += f"; {_guard_words(guard)}"
        if value["use"] and isinstance(verdict.matcher, PersonMatcher):  # library-fitted kinds: refitted when used
            matcher = verdict.matcher
            directory = _matcher_dir(library)
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{space}-{digest[:16]}.npz"
            np.savez(path, **{**matcher.to_dict(), "names": names.astype(str)})  # type: ignore[arg-type]
            for old in directory.glob(f"{space}-*.npz"):
                if old != path:
                    old.unlink(missing_ok=True)
            value["file"] = path.name
    value["seconds"] = round(time.perf_counter() - started, 2)
    if row is None:
        session.add(PipelineState(key=state_key(space), value=value))
    else:
        row.value = value
    log.info("learned matcher (%s): %s (%.1f s)", space, value["reason"], value["seconds"])
    return {**value, "reused": False}


@dataclass(frozen=True)
class _LibraryContext:
    """Every face of the space (ids ascending), its k-NN graph (k = the library matcher's neighbours)."""

    ids: np.ndarray
    vectors: np.ndarray
    neighbours: np.ndarray  # (N, k) int
    nearest: np.ndarray  # (N,) cosine with the nearest other face (-inf: none)


def _library_context(vectors: VectorStore, space: str) -> _LibraryContext:
    ids, matrix = vectors.fetch_all(space)
    if len(ids) < 2:
        return _LibraryContext(ids, matrix, np.zeros((len(ids), 0), np.int64), np.full(len(ids), -np.inf))
    graph = knn_graph(matrix, n_neighbors=min(DEFAULT_NEIGHBOURS, len(ids) - 1))
    return _LibraryContext(ids, matrix, graph.indices, graph.similarities[:, 0])


def _isolated_guard(
    context: _LibraryContext,
    face_ids: np.ndarray,
    matrix: np.ndarray,
    labels: np.ndarray,
    matcher: Any,
    matcher_threshold: float,
    matcher_margin: float,
    threshold: float,
    margin: float,
    cluster_eps: float,
) -> dict[str, Any]:
    """The offset that keeps the matcher from naming more of the library's isolated unnamed faces (mostly people
    seen once: the gate's held-out people, all photographed several times, do not stand for them) than raw
    matching names at its threshold (`learned_matching.isolated_face_offset`); also how many of all the
    library's unnamed faces each names (raw, and the matcher at the raised threshold)."""
    unnamed = ~np.isin(context.ids, face_ids[labels != NO_PERSON])
    isolated = ~np.isin(context.ids, face_ids) & (context.nearest < 1.0 - cluster_eps)
    named = labels != NO_PERSON
    unit = matrix[named] / np.maximum(np.linalg.norm(matrix[named], axis=1, keepdims=True), 1e-12)
    prototypes = build_prototypes(unit, labels[named])
    faces = context.vectors[unnamed]
    photos = -1 - np.arange(len(faces))  # one photo each: no photo conflicts among them
    raw = assign_to_known_people(faces, photos, prototypes, threshold, margin).person_index != NO_PERSON
    scores = matcher.scores(faces) if len(faces) else np.zeros((0, len(prototypes.person_ids)), np.float32)
    alone = isolated[unnamed]
    raw_named = int(raw[alone].sum())
    # A raw-scale matcher decides at raw matching's own calibrated threshold: nothing to raise. Raising it
    # (measured on the degraded evaluation's library) cost 9 of its 21 fewer errors and kept out no stranger:
    # the isolated faces it names beyond raw matching are named people's lone faces.
    raises = not isinstance(matcher, BoundaryMatcher)
    offset = (
        isolated_face_offset(scores[alone], matcher_threshold, matcher_margin, raw_named)
        if alone.any() and raises
        else 0.0
    )

    def learned_at(raised: float) -> np.ndarray:
        if not len(faces):
            return raw
        kept = assign_to_known_people(  # one chunk: the scores are already computed
            faces,
            photos,
            prototypes,
            matcher_threshold + raised,
            matcher_margin,
            scorer=lambda _: scores,
            chunk_size=len(faces),
        )
        return kept.person_index != NO_PERSON

    at_gate = learned_at(0.0)
    in_use = learned_at(offset) if offset > 0 else at_gate
    return {
        "faces": int(alone.sum()),
        "raw_named": raw_named,
        "learned_named": int(at_gate[alone].sum()),
        "raised_by": float(offset),
        "raises": raises,
        "unnamed_faces": int(len(faces)),
        "unnamed_raw_named": int(raw.sum()),
        "unnamed_learned_named": int(in_use.sum()),
    }


def _library_fit(context: _LibraryContext, face_ids: np.ndarray) -> MatcherFit:
    return library_matcher_fit(context.vectors, np.searchsorted(context.ids, face_ids), context.neighbours)


_NEEDS_LIBRARY = ("library", "boundaries")  # kinds fitted with the whole library as context


def _fit_for(
    kind: str, context: _LibraryContext | None, face_ids: np.ndarray, threshold: float, margin: float
) -> MatcherFit:
    if context is None or kind not in _NEEDS_LIBRARY:
        return fit_person_matcher
    if kind == "boundaries":
        return boundary_matcher_fit(context.vectors, np.searchsorted(context.ids, face_ids), threshold, margin)
    return _library_fit(context, face_ids)


def matcher_for_run(
    library: Library,
    session: Session,
    vectors: VectorStore,
    space: str,
    prototypes: Prototypes | None,
    threshold: float,
    margin: float,
) -> RunMatcher:
    """The matching a supervised_assignments run uses (raw unless everything allows the learned matcher)."""
    if not library.settings.learned_matching:
        return RunMatcher(None, threshold, margin, "raw matching (FACE_LEARNED_MATCHING off)")
    if prototypes is None:
        return RunMatcher(None, threshold, margin, "raw matching: nobody named yet")
    pin = read_pin(session)
    if pin is not None and pin.pins_raw:
        return RunMatcher(None, threshold, margin, f"raw matching: raw space pinned by `faces reassign` ({pin.at})")
    value = stored_verdict(session, space)
    if value is None:
        return RunMatcher(None, threshold, margin, "raw matching: no learned matcher fitted yet")
    if not value.get("use"):
        return RunMatcher(None, threshold, margin, str(value.get("reason", "raw matching")))
    face_ids, people, _, rejections = _labels(session)
    kind = library.settings.learned_matcher
    if value.get("digest") != _digest(kind, space, threshold, margin, face_ids, people, rejections):
        return RunMatcher(
            None, threshold, margin, "raw matching: the labels, matcher or threshold changed since it was judged"
        )
    names_of = np.array(sorted({p for p in people.tolist() if p is not None}), dtype=object)
    labels, rej = _label_rows(face_ids, people, rejections, names_of)
    matrix = vectors.fetch(space, face_ids)
    recheck = "cluster_eps" in value and "gate_threshold" in value
    context = _library_context(vectors, space) if kind in _NEEDS_LIBRARY or recheck else None
    if kind in _NEEDS_LIBRARY:  # refitted on the labels it was judged on, with today's library as context
        fit = _fit_for(kind, context, face_ids, threshold, margin)
        matcher: Any = fit(matrix, labels, rej, np.arange(len(face_ids)))
        names = names_of[matcher.people_]
    else:
        with np.load(_matcher_dir(library) / str(value["file"]), allow_pickle=False) as state:
            arrays = {k: state[k] for k in state.files}
        matcher = PersonMatcher.from_dict(arrays)
        names = arrays["names"].astype(object)[matcher.people_]
    in_use, reason = float(value["threshold"]), str(value["reason"])
    if recheck:  # the library grew since the verdict: its isolated faces are judged again, every run
        assert context is not None
        gate_threshold = float(value["gate_threshold"])
        guard = _isolated_guard(
            context,
            face_ids,
            matrix,
            labels,
            matcher,
            gate_threshold,
            float(value["margin"]),
            threshold,
            margin,
            float(value["cluster_eps"]),
        )
        refused = _no_gain(guard)
        if refused:
            return RunMatcher(None, threshold, margin, f"kept raw matching on today's library: {refused}")
        in_use = gate_threshold + float(guard["raised_by"])
        reason = f"{reason.split('; threshold ', 1)[0]}; on today's library: {_guard_words(guard)}"
    columns = prototypes.index_of(names.tolist())
    keep = columns >= 0
    width = prototypes.n_people

    def scorer(chunk: np.ndarray) -> np.ndarray:
        out = np.full((len(chunk), width), -np.inf, dtype=np.float32)
        out[:, columns[keep]] = matcher.scores(chunk)[:, keep]
        return out

    # the threshold is part of the tag: a re-checked guard that moves it makes the next run a full one
    return RunMatcher(scorer, in_use, float(value["margin"]), reason, f"{str(value['digest'])[:16]}@{in_use:.6g}")


def _label_rows(
    face_ids: np.ndarray, people: np.ndarray, rejections: list[tuple[int, str]], names: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,) int: column in `names` or NO_PERSON, rejections (k, 2) (row, column)) of `_labels`' faces."""
    labels = np.full(len(face_ids), NO_PERSON, dtype=np.int64)
    named = people != None  # noqa: E711
    labels[named] = np.searchsorted(names, people[named].astype(str).astype(object))
    row_of = {int(f): i for i, f in enumerate(face_ids.tolist())}
    column = {str(p): i for i, p in enumerate(names.tolist())}
    rej = np.array(
        [(row_of[f], column[p]) for f, p in rejections if f in row_of and p in column], dtype=np.int64
    ).reshape(-1, 2)
    return labels, rej


def _guard_words(guard: dict[str, Any]) -> str:
    if guard.get("raises", True):
        isolated = (
            f"threshold raised by {guard['raised_by']:.2f} to name no more of the library's {guard['faces']} isolated "
            f"unnamed faces than raw matching ({guard['raw_named']}; {guard['learned_named']} at the gate's "
            "threshold)"
        )
    else:
        isolated = (
            f"threshold not raised (raw scale); of the library's {guard['faces']} isolated unnamed faces it names "
            f"{guard['learned_named']}, raw matching {guard['raw_named']}"
        )
    return (
        f"{isolated}; it names {guard['unnamed_learned_named']} of the {guard['unnamed_faces']} unnamed faces, "
        f"raw matching {guard['unnamed_raw_named']}"
    )


def _no_gain(guard: dict[str, Any]) -> str:
    """Why the matcher cannot pay once the guard raised its threshold ("" when it may): a matcher that names no
    more of the library's unnamed faces than raw matching does can only leave more faces of named people
    unnamed (wrong names are rare for both), so it is not used."""
    if guard["unnamed_faces"] and guard["unnamed_learned_named"] <= guard["unnamed_raw_named"]:
        return f"no gain to expect: {_guard_words(guard)}"
    return ""
