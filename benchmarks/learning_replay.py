"""Replay the last step of `faces evaluate --train` with other learned matchers, on the library it left behind.

    FACE_EMBEDDER=dlib .venv/bin/face-pipeline faces evaluate ../shared/datasets/lfw-dev --train --data-dir D
    FACE_EMBEDDER=dlib .venv/bin/python benchmarks/learning_replay.py D ../shared/datasets/lfw-dev \
        [--options raw,library,adaptive,...]

An evaluation with `--data-dir D` leaves its final library (phase B ingested, the simulated user's labels and
rejections) in D/pipeline. For each option this copies that library, refits and gates the matcher through the
product's own services (`run_cluster_dual`: person_centroids -> learned matcher gate and isolated-face guard ->
supervised_assignments -> unknown grouping) and scores it as the evaluation scores phase B (`score_pipeline`).
So options are compared on exactly the same labels and photos in minutes instead of a whole evaluation each;
the winner must still be confirmed by `faces evaluate --train` (the labels of later rounds depend on how
earlier rounds were matched). Set the same FACE_* variables as the evaluation (FACE_EMBEDDER,
FACE_MIN_FACE_SIZE): they decide nothing here but the settings must load the same way.

Options: `raw` (learned matching off), the product's kinds (`library`, `adaptive`), and VARIANTS (the library
kind with other LibraryMatcher parameters, or `library-refit`: the default judged afresh). Prints a markdown
table and one JSON line per option: {"bench": "learning_replay", "option", figures...}.

--sweep: instead, fit each option on all the labels and match every face nobody confirmed at a range of
thresholds (offsets over the raw threshold mapped onto its scale; margin mapped, rejections masked, photo
conflicts ignored), printing known-people errors, one-off strangers named and false accepts at each, and the
fewest errors at which it names no more strangers and makes no more false accepts than raw matching. That
threshold is chosen with the truth: it says whether ANY threshold could reach the goal, i.e. whether the
scores or the calibration fall short. Measured on the evaluations' final libraries (2026-11-27): dlib, no
option at any threshold: at raw's 3 strangers / 13 false accepts the best was 45 errors (raw 41); degraded
buffalo_s, the library kind reaches 48 errors (raw 72, -33%) with 0 strangers between offsets 0.8 and 1.0,
but the guard's threshold sits at 1.2-1.7 (59-66 errors).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from face_pipeline.domain.learned_matching import library_matcher_fit  # noqa: E402
from face_pipeline.domain.neighbors import knn_graph  # noqa: E402
from face_pipeline.domain.neighbour_averaging import DEFAULT_NEIGHBOURS  # noqa: E402
from face_pipeline.services import learned_matcher as learned_service  # noqa: E402
from face_pipeline.services.cluster_dual import run_cluster_dual  # noqa: E402
from face_pipeline.services.library import Library  # noqa: E402
from face_pipeline.settings import load_settings  # noqa: E402
from face_pipeline_eval.dataset import load_dataset  # noqa: E402
from face_pipeline_eval.scoring import read_state, score_pipeline  # noqa: E402
from face_pipeline_eval.simulated_user import names_for  # noqa: E402

# Experimental variants of the library kind: option -> library_matcher_fit keyword arguments
VARIANTS: dict[str, dict[str, Any]] = {
    "library-refit": {},  # the library kind judged afresh on the library as it is now
    "self1": {"self_weight": 1.0},
    "self4": {"self_weight": 4.0},
    "k10": {"n_neighbors": 10},
    "k4": {"n_neighbors": 4},
    "ex10": {"max_exemplars": 10},
    "ex20": {"max_exemplars": 20},
    "share0.6": {"context_share": 0.6},
    "w0": {"weight": 0.0},
}


@contextmanager
def _variant(option: str) -> Iterator[str]:
    """The product kind to ask for; a VARIANTS option is that kind with its own fit patched in."""
    if option not in VARIANTS:
        yield option
        return
    fitter, version = learned_service._library_fit, learned_service._VERSION
    params = VARIANTS[option]

    def patched(context: Any, face_ids: np.ndarray) -> Any:
        k = params.get("n_neighbors", DEFAULT_NEIGHBOURS)
        graph = context.neighbours if k <= context.neighbours.shape[1] else knn_graph(context.vectors, k).indices
        return library_matcher_fit(context.vectors, np.searchsorted(context.ids, face_ids), graph, **params)

    learned_service._library_fit, learned_service._VERSION = patched, f"{version}-{option}"
    try:
        yield "library"
    finally:
        learned_service._library_fit, learned_service._VERSION = fitter, version


def replay(data_dir: Path, dataset_dir: Path, option: str) -> dict[str, Any]:
    with _variant(option) as kind:
        return _replay(data_dir, dataset_dir, option, kind)


def _replay(data_dir: Path, dataset_dir: Path, option: str, kind: str) -> dict[str, Any]:
    dataset = load_dataset(dataset_dir)
    photos_dir = data_dir / "photos"
    with tempfile.TemporaryDirectory(prefix="learning-replay-") as tmp:
        copy = Path(tmp) / "pipeline"
        shutil.copytree(data_dir / "pipeline", copy)
        on = option != "raw"
        settings = load_settings(
            photos_dir=photos_dir,
            data_dir=copy,
            database_url=None,
            qdrant_url=None,
            learned_matching=on,
            **({"learned_matcher": kind} if on else {}),
        )
        library = Library.from_settings(settings)
        try:
            started = time.perf_counter()
            with library.vectors() as vectors:
                dual = run_cluster_dual(library, vectors, space_mode="trained")
            seconds = time.perf_counter() - started
            name_of = names_for(dataset.photos_per_identity)
            identity_of_name = {name: identity for identity, name in name_of.items()}
            state = read_state(library.db, dataset.identity_of_library_path(photos_dir), identity_of_name)
        finally:
            library.close()
    row = score_pipeline(option, state, dataset.strangers, seconds).as_json()
    stranger_count = int(sum(1 for t in state.truth if t in dataset.strangers))
    return {
        **row,
        "strangers": stranger_count,
        "matcher": dual.centroids.matcher,
        "matching": dual.assignments.matching,
    }


def sweep(data_dir: Path, dataset_dir: Path, option: str) -> None:
    """Print the oracle threshold sweep of one option (see --sweep in the module docstring)."""
    from sqlalchemy import select

    from face_pipeline.domain.learned_matching import _best_with_margin, fit_person_matcher
    from face_pipeline.domain.person_matching import PersonMatcher
    from face_pipeline.services.face_table import read_faces, read_rejections
    from face_pipeline.services.run_params import space_params
    from face_pipeline.storage.models import Person
    from face_pipeline_eval.scoring import UNKNOWN_IDENTITY

    dataset = load_dataset(dataset_dir)
    settings = load_settings(
        photos_dir=data_dir / "photos", data_dir=data_dir / "pipeline", database_url=None, qdrant_url=None
    )
    library = Library.from_settings(settings)
    identity_of_name = {n: i for i, n in names_for(dataset.photos_per_identity).items()}
    state = read_state(library.db, dataset.identity_of_library_path(data_dir / "photos"), identity_of_name)
    with library.db.session() as session:
        params = space_params(library, session)
        table = read_faces(session)
        rejections = read_rejections(session)
        face_ids, people, _, rejection_pairs = learned_service._labels(session)
        person_name = dict(session.execute(select(Person.id, Person.name)).tuples().all())
    with library.vectors() as store:
        context = learned_service._library_context(store, params.space)
    library.close()
    names = np.array(sorted({p for p in people.tolist() if p is not None}), dtype=object)
    labels, rej = learned_service._label_rows(face_ids, people, rejection_pairs, names)
    matrix = context.vectors[np.searchsorted(context.ids, face_ids)]
    with _variant(option) as kind:
        fit = fit_person_matcher if kind == "adaptive" else learned_service._library_fit(context, face_ids)
        matcher = fit(matrix, labels, rej, np.arange(len(face_ids)))
    prototype_cosines = PersonMatcher().fit(matrix, labels, rej)  # raw matching's scores, same columns
    candidates = np.flatnonzero(~table.confirmed)
    truth = state.truth[candidates]
    named = {identity_of_name.get(person_name[p], "?") for p in names.tolist()}
    identity = np.array([identity_of_name.get(person_name[p], "?") for p in names[matcher.people_]], dtype=object)
    scored = truth != UNKNOWN_IDENTITY
    of_named = np.isin(truth, list(named)) & scored
    stranger = np.isin(truth, list(dataset.strangers)) & scored
    ruled_out = np.zeros((len(candidates), len(matcher.people_)), dtype=bool)
    column = {int(p): j for j, p in enumerate(matcher.people_.tolist())}
    position = {int(f): i for i, f in enumerate(table.ids[candidates].tolist())}
    row_person = {str(p): int(np.searchsorted(names, p)) for p in names.tolist()}
    for face, person in rejections:
        if face in position and person in row_person and row_person[person] in column:
            ruled_out[position[face], column[row_person[person]]] = True

    def figures(scores: np.ndarray, threshold: float, margin: float) -> tuple[int, int, int]:
        scores = np.where(ruled_out, -np.inf, scores)
        best = _best_with_margin(scores, margin)
        given = np.where(best >= threshold, identity[scores.argmax(axis=1)], None)
        right = (given != None) & (given == truth)  # noqa: E711
        return (
            int((of_named & ~right).sum()),
            int(((given != None) & stranger).sum()),  # noqa: E711
            int(((given != None) & scored & ~of_named).sum()),  # noqa: E711
        )

    vectors = context.vectors[np.searchsorted(context.ids, table.ids[candidates])]
    raw_scores = prototype_cosines.cosine_scores(vectors)
    raw = figures(raw_scores, params.person_threshold, params.person_margin)
    print(
        f"{option}: raw matching: errors {raw[0]} of {int(of_named.sum())}, strangers named {raw[1]} of "
        f"{int(stranger.sum())}, false accepts {raw[2]}"
    )
    if option == "raw":
        return
    scores = matcher.scores(vectors)
    mapped, margin = matcher.threshold_for(params.person_threshold), matcher.margin_for(params.person_margin)
    best: tuple[float, int, int, int] | None = None
    for offset in np.arange(-1.0, 3.0001, 0.05):
        errors, strangers, false_accepts = figures(scores, mapped + offset, margin)
        if offset.round(2) % 0.25 == 0:
            print(
                f"  offset {offset:+.2f}: errors {errors}, strangers named {strangers}, false accepts {false_accepts}"
            )
        if strangers <= raw[1] and false_accepts <= raw[2] and (best is None or errors < best[1]):
            best = (float(offset), errors, strangers, false_accepts)
    if best is not None:
        change = best[1] / max(raw[0], 1) - 1
        print(f"  fewest errors, strangers and false accepts <= raw: {best[1]} ({change:+.0%}) at {best[0]:+.2f}")
    print(json.dumps({"bench": "learning_replay_sweep", "option": option, "raw": raw, "best": best}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="the --data-dir of a finished `faces evaluate --train`")
    parser.add_argument("dataset", type=Path, help="the photo set that evaluation played")
    parser.add_argument("--options", default="raw,library", help="comma-separated (default raw,library)")
    parser.add_argument("--sweep", action="store_true", help="the oracle threshold sweep (see above)")
    args = parser.parse_args(argv)
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = [o for o in options if o != "raw" and o not in learned_service.KINDS and o not in VARIANTS]
    if unknown:
        sys.exit(f"unknown options {unknown}: raw or one of {sorted(learned_service.KINDS)}")
    if args.sweep:
        for option in options:
            sweep(args.data_dir, args.dataset, "library" if option == "raw" else option)
        return
    print("| option | precision | unknown purity | recall | known-people errors | strangers named | FA/1000 | s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for option in options:
        r = replay(args.data_dir, args.dataset, option)
        rows.append(r)
        print(
            f"| {option} | {r['precision']:.4f} of {r['automatic']} | {r['unknown_purity']:.4f} | "
            f"{r['recall']:.4f} of {r['recall_faces']} | {r['known_errors']} | "
            f"{r['strangers_named']:.4f} ({round(r['strangers_named'] * r['strangers'])} of {r['strangers']}) | "
            f"{r['false_accepts_per_1000']:.1f} | {r['seconds']:.0f} |",
            flush=True,
        )
    for r in rows:
        print(json.dumps({"bench": "learning_replay", "option": r["stage"], **r}))
    for r in rows:
        print(f"{r['stage']}: {r['matcher']} || {r['matching']}", file=sys.stderr)


if __name__ == "__main__":
    main()
