"""Ways of learning from users' labels, side by side, on a library that grows over labelling rounds (issue 12).

    .venv/bin/python benchmarks/degraded_variant.py --embed buffalo_s     # once: the degraded case's faces
    .venv/bin/python benchmarks/learning_options.py [--quick] [--cases dlib,degraded,sharp] [--seeds 3]

Offline replica of `faces evaluate --train`'s protocol in numpy, on cached real embeddings (main face per
photo): lfw-dev by dlib (.cache/lfw-dev-dlib.npz, `face_pipeline_tests.lfw_cache`, built on first use, 4-7
min), lfw-dev degraded to 80 px / JPEG q40 by buffalo_s (.cache/lfw-dev-80px-q40-buffalo_s-minface16.npz
from benchmarks/degraded_variant.py --embed: at the default FACE_MIN_FACE_SIZE 36 only 251 of the 5,029
degraded photos keep a face, at 16 all of them), and sharp lfw-dev by buffalo_s. --quick: one seed and the
fast options (~10 s a case); the full run (3 seeds, every option) takes ~15 minutes on 2 busy cores.

Protocol (per seed):
- People with >= 5 faces: 80% are *named*. Each named person's faces are split into a labelling pool (60%)
  and HELD-OUT faces (40%, >= 2) that are never trained on nor used as prototypes. The user names a third
  of the pool in round 1 (>= 2 faces), two thirds by round 2, all of it by round 3. In round 1 the user also
  rejects ("not this person") the two library faces of other people nearest the person's first faces, as
  they would when naming a cluster that held look-alikes.
- Everyone else (one-photo people, 2-4 photo people, the other 20%) is never named; their identities are
  split in thirds: CALIBRATION strangers (training side: used only to set thresholds), SEEN strangers (the
  library faces a user may reject) and EVALUATION strangers (must stay unnamed).
- After each round every option is fitted on the labels so far, its 'nobody' threshold is calibrated on the
  calibration strangers at the same false-accept rate (--far, default 0.5% of them named; margin 0 apart
  from the product rows), and it names the held-out faces and evaluation strangers: best person if the
  score reaches the threshold, never a person the user rejected for that face.
- Known-people errors = held-out faces left unnamed + faces given a wrong name; precision = right names /
  names given (held-out and strangers); strangers named per 1,000 evaluation strangers; seconds to fit.
  Figures are summed over the 3 rounds and the seeds; "final round" is round 3 alone.
- "errors at raw's strangers named": each option's errors at the threshold that names exactly as many
  evaluation strangers as calibrated raw did in that round: the scores' quality without calibration noise
  (that threshold sees the evaluation strangers, so it is a yardstick, not a deployable setting).
- Rows "raw (product thresholds)" and "... at product thresholds mapped" use the product's fixed threshold
  and margin (assignment.thresholds_for_space; mapped with PersonMatcher.threshold_for / margin_for).

Options: raw prototypes (the product: centroid + 5 exemplars, best cosine); every labelled face as an exemplar;
the seed's triplet head (domain.projection.train_projection, used as a global projection); linear metrics
from the labels used for matching only (within-class whitening, LDA-style two-covariance, nuisance
projection); per-person logistic regression (other people's faces and rejections as negatives), alone and
added to raw; score normalisation against the named people (z per person, s = z + t per face, and the
shrunk s-norm that domain.person_matching implements); learned prototypes (cosine softmax) with exemplars.
Transductive options (benchmarks/learning_transductive.py; they also use the library's UNLABELLED faces, all
faces of the case, never their identities): each face averaged with its nearest library faces
(domain.neighbour_averaging), alone and mixed with PersonMatcher (LibraryMatcher, the one that reaches issue
12's goal on dlib and degraded buffalo_s), score diffusion over the k-NN graph, two-hop links through
unlabelled faces, neighbour votes, a cluster-membership rule, k-reciprocal second-order similarity; and
per-person genuine/impostor normalisation (labelled faces' own spread).

Prints a markdown table per case and one JSON line per figure:
{"bench": "learning_options", "case", "option", "metric", "value"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from face_pipeline.domain.assignment import build_prototypes, thresholds_for_space  # noqa: E402

ROUNDS = 3
NAMED_SHARE = 0.8
POOL_SHARE = 0.6
REJECTIONS_PER_PERSON = 2

Scorer = Callable[[np.ndarray], np.ndarray]  # (m, d) raw unit vectors -> (m, p) scores, p people


# --- data -----------------------------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class Case:
    name: str
    space: str  # embedding space name (product thresholds)
    vectors: np.ndarray  # (n, d) float32 unit
    identities: np.ndarray  # (n,) str
    photos: int


def load_case(name: str) -> Case:
    from face_pipeline_tests.lfw_cache import cache_path, load_or_build

    dev = REPO.parent / "shared" / "datasets" / "lfw-dev"
    if name == "dlib":
        data, space = load_or_build(dev, REPO / ".cache", "dlib"), "dlib_resnet_v1"
    elif name == "sharp":
        data, space = load_or_build(dev, REPO / ".cache", "buffalo_s"), "insightface_buffalo_s"
    elif name == "degraded":
        folder = REPO / ".cache" / "lfw-dev-80px-q40"
        if not folder.is_dir():
            sys.exit(f"{folder} is missing: run benchmarks/degraded_variant.py first")
        cache = cache_path(REPO / ".cache", folder, "buffalo_s", min_face_size=16)
        if not cache.is_file():
            sys.exit(f"{cache} is missing: run benchmarks/degraded_variant.py --embed buffalo_s first")
        data, space = dict(np.load(cache)), "insightface_buffalo_s"
    else:
        raise ValueError(f"unknown case {name!r}")
    photos = int(data["photos"]) if "photos" in data else len(data["vectors"])
    return Case(name, space, unit(data["vectors"]), np.asarray(data["identities"]).astype(str), photos)


# --- the growing library --------------------------------------------------------------------------------


@dataclass
class Library:
    """Roles of the faces of one case for one seed (indices into the case's arrays)."""

    person_of: np.ndarray  # (n,) int64, named person index, -1 for faces of never-named identities
    label_round: np.ndarray  # (n,) int64, round a face is named in (1..ROUNDS), 0: never labelled
    heldout: np.ndarray  # (h,) faces of named people to find
    calibration: np.ndarray  # (c,) training-side strangers' faces (threshold calibration)
    strangers: np.ndarray  # (s,) evaluation strangers' faces
    rejections: np.ndarray  # (r, 2) (face row, person index) decided in round 1
    seen: np.ndarray  # (u,) training-side unnamed faces the user saw (rejections come from here)
    n_people: int = 0
    rows_of_round: list[np.ndarray] = field(default_factory=list)

    def library(self, rnd: int) -> np.ndarray:
        """Training-side faces in the library by round `rnd` (labelled or not): never held-out or strangers."""
        return np.union1d(np.flatnonzero(self.label_round >= 1), np.union1d(self.calibration, self.seen))

    def labelled(self, rnd: int) -> np.ndarray:
        return np.flatnonzero((self.label_round >= 1) & (self.label_round <= rnd))


def build_library(case: Case, seed: int) -> Library:
    rng = np.random.default_rng(seed)
    ids, face_id = np.unique(case.identities, return_inverse=True)
    counts = np.bincount(face_id)
    frequent = np.flatnonzero(counts >= 5)
    named = np.sort(rng.choice(frequent, int(round(NAMED_SHARE * len(frequent))), replace=False))
    person_of_identity = np.full(len(ids), -1, np.int64)
    person_of_identity[named] = np.arange(len(named))
    person_of = person_of_identity[face_id]
    label_round = np.zeros(len(face_id), np.int64)
    heldout = []
    for ident in named:
        rows = rng.permutation(np.flatnonzero(face_id == ident))
        pool_n = min(len(rows) - 2, max(3, int(round(POOL_SHARE * len(rows)))))
        pool, held = rows[:pool_n], rows[pool_n:]
        heldout.append(held)
        cut1 = max(2, int(np.ceil(pool_n / 3)))
        cut2 = max(cut1, int(np.ceil(2 * pool_n / 3)))
        label_round[pool[:cut1]] = 1
        label_round[pool[cut1:cut2]] = 2
        label_round[pool[cut2:]] = 3
    others = rng.permutation(np.setdiff1d(np.arange(len(ids)), named))
    third = len(others) // 3
    calib_mask = np.isin(face_id, others[:third])
    seen_mask = np.isin(face_id, others[third : 2 * third])  # unnamed library faces a user may reject
    stranger_mask = np.isin(face_id, others[2 * third :])
    # Round-1 rejections: the library faces of other people nearest each person's first labelled faces.
    first = np.flatnonzero(label_round == 1)
    sums = np.zeros((len(named), case.vectors.shape[1]), np.float32)
    np.add.at(sums, person_of[first], case.vectors[first])
    centroids = unit(sums)
    library_faces = np.flatnonzero(seen_mask | (label_round >= 1))  # what the user could have seen
    sims = case.vectors[library_faces] @ centroids.T
    sims[person_of[library_faces][:, None] == np.arange(len(named))[None, :]] = -np.inf
    near = np.argsort(-sims, axis=0)[:REJECTIONS_PER_PERSON]  # (r, p)
    rejections = np.stack([library_faces[near.ravel()], np.tile(np.arange(len(named)), near.shape[0])], axis=1)
    return Library(
        person_of=person_of,
        label_round=label_round,
        heldout=np.sort(np.concatenate(heldout)),
        calibration=np.flatnonzero(calib_mask),
        strangers=np.flatnonzero(stranger_mask),
        rejections=rejections.astype(np.int64),
        seen=np.flatnonzero(seen_mask),
        n_people=len(named),
    )


# --- deciding and scoring -------------------------------------------------------------------------------


def decide(scores: np.ndarray, threshold: float, margin: float, masked: np.ndarray | None = None) -> np.ndarray:
    """(m,) person index or -1: best allowed person when it reaches `threshold` and leads by `margin`."""
    scores = scores.astype(np.float32, copy=True)
    if masked is not None and len(masked):
        scores[masked[:, 0], masked[:, 1]] = -np.inf
    top = np.argpartition(-scores, 1, axis=1)[:, :2]
    top_scores = np.take_along_axis(scores, top, 1)
    order = np.argsort(-top_scores, axis=1)
    top, top_scores = np.take_along_axis(top, order, 1), np.take_along_axis(top_scores, order, 1)
    ok = (top_scores[:, 0] >= threshold) & (top_scores[:, 0] - top_scores[:, 1] >= margin)
    return np.where(ok, top[:, 0], -1)


def calibrate(scores: np.ndarray, far: float, margin: float) -> float:
    """Lowest threshold at which at most `far` of these (stranger) faces would be named."""
    top = np.sort(scores, axis=1)[:, -2:]
    best = np.where(top[:, 1] - top[:, 0] >= margin, top[:, 1], -np.inf)
    best = np.sort(best)[::-1]
    allowed = int(np.floor(far * len(best)))
    if allowed >= len(best):
        return float(best[-1])
    return float(np.nextafter(best[allowed], np.float32(np.inf)))


def masked_rows(rejections: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rejections of `rows` as (position in rows, person)."""
    pos = {int(r): i for i, r in enumerate(rows)}
    keep = [(pos[int(f)], int(p)) for f, p in rejections if int(f) in pos]
    return np.asarray(keep, np.int64).reshape(-1, 2)


# --- options --------------------------------------------------------------------------------------------


def prototype_scores(gallery: np.ndarray, people: np.ndarray, n_people: int, exemplars: int = 5) -> Scorer:
    protos = build_prototypes(gallery, people, max_exemplars=exemplars)
    owner = protos.person_ids.astype(np.int64)[protos.owner]
    order = np.argsort(owner, kind="stable")
    vecs, owner = protos.vectors[order], owner[order]
    starts = np.searchsorted(owner, np.arange(n_people))

    def score(x: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(unit(x) @ vecs.T, starts, axis=1)

    return score


def fit_raw(x, y, rej, n, rows, library):  # noqa: ANN001 - benchmark-local option signature
    return prototype_scores(x[rows], y[rows], n)


def fit_knn(x, y, rej, n, rows, library):  # noqa: ANN001
    return prototype_scores(x[rows], y[rows], n, exemplars=10_000)


def fit_triplet_head(x, y, rej, n, rows, library):  # noqa: ANN001
    import torch

    from face_pipeline.domain.projection import TrainingParams, train_projection

    faces = np.union1d(rows, rej[:, 0])
    local = {int(r): i for i, r in enumerate(faces)}
    labels = np.full(len(faces), -1, np.int64)
    labels[[local[int(r)] for r in rows]] = y[rows]
    rejections = np.asarray([(local[int(f)], int(p)) for f, p in rej], np.int64).reshape(-1, 2)
    result = train_projection(x[faces], labels, rejections, TrainingParams(epochs=20, min_people=4))
    head = result.head()

    def project(v: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return unit(head(torch.from_numpy(unit(v))).numpy())

    inner = prototype_scores(project(x[rows]), y[rows], n)
    fit_triplet_head.last = f"best epoch {result.best_epoch}, promote={result.promote}"  # type: ignore[attr-defined]
    return lambda v: inner(project(v))


def within_class_whitener(x: np.ndarray, y: np.ndarray, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, W): z = (x - mean) @ W whitens the within-person scatter of the labelled faces."""
    mean = x.mean(axis=0)
    sums = np.zeros((y.max() + 1, x.shape[1]))
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=len(sums))[:, None]
    resid = x - (sums / np.maximum(counts, 1))[y]
    sw = resid.T.astype(np.float64) @ resid / max(len(x) - len(sums), 1)
    d = x.shape[1]
    sw = (1 - shrink) * sw + shrink * np.trace(sw) / d * np.eye(d)
    vals, vecs = np.linalg.eigh(sw)
    w = vecs / np.sqrt(np.maximum(vals, 1e-12))
    return mean.astype(np.float32), w.astype(np.float32)


def fit_wccn(shrink: float, exemplars: int = 5):  # noqa: ANN201
    def fit(x, y, rej, n, rows, library):  # noqa: ANN001
        mean, w = within_class_whitener(x[rows], y[rows], shrink)
        inner = prototype_scores(unit((x[rows] - mean) @ w), y[rows], n, exemplars)
        return lambda v: inner(unit((v - mean) @ w))

    return fit


def two_covariance(
    x: np.ndarray, y: np.ndarray, library: np.ndarray, shrink: float, power: float
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, W): z = (x - mean) @ W, the generalised eigenbasis where the labelled faces' within-person
    scatter is the identity, each direction weighted by (between / total)^power (between = total - within;
    total from every library face, labelled or not)."""
    import scipy.linalg

    mean = library.mean(axis=0)
    lib = (library - mean).astype(np.float64)
    st = lib.T @ lib / max(len(lib) - 1, 1)
    sums = np.zeros((y.max() + 1, x.shape[1]))
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=len(sums))[:, None]
    resid = (x - (sums / np.maximum(counts, 1))[y]).astype(np.float64)
    sw = resid.T @ resid / max(len(x) - int((counts > 0).sum()), 1)
    d = x.shape[1]
    sw = (1 - shrink) * sw + shrink * np.trace(sw) / d * np.eye(d)
    ratio, vecs = scipy.linalg.eigh(st, sw)  # vecs.T @ sw @ vecs = I, vecs.T @ st @ vecs = diag(ratio)
    between = np.clip(ratio - 1.0, 0.0, None)
    weight = (between / np.maximum(ratio, 1e-12)) ** power
    return mean.astype(np.float32), (vecs * weight).astype(np.float32)


def fit_two_cov(shrink: float, power: float, exemplars: int = 5):  # noqa: ANN201
    def fit(x, y, rej, n, rows, library):  # noqa: ANN001
        mean, w = two_covariance(x[rows], y[rows], x[library], shrink, power)
        inner = prototype_scores(unit((x[rows] - mean) @ w), y[rows], n, exemplars)
        return lambda v: inner(unit((v - mean) @ w))

    return fit


def fit_znorm(top: int, exemplars: int = 5, base: str = "raw"):  # noqa: ANN201
    """Per-person score normalisation: each person's scores measured against how the faces of the OTHER
    named people (and the faces rejected from them) score for that person: (s - mean) / std of the
    `top` highest impostor scores."""

    def fit(x, y, rej, n, rows, library):  # noqa: ANN001
        inner = prototype_scores(x[rows], y[rows], n, exemplars)
        cohort = np.union1d(rows, rej[:, 0])
        imp = inner(x[cohort])
        own = y[cohort]
        valid = own >= 0
        imp[np.flatnonzero(valid), own[valid]] = -np.inf  # a person's own faces are not impostors
        k = min(top, len(cohort) - 1)
        tops = -np.sort(-imp, axis=0)[:k]  # (k, p)
        mu, sd = tops.mean(axis=0), tops.std(axis=0) + 1e-3
        return lambda v: (inner(v) - mu) / sd

    return fit


def impostor_tops(x, y, rej, n, rows, top, exemplars):  # noqa: ANN001, ANN201
    """The raw prototype scorer of the labelled faces `rows`, the impostor cohort's size (labelled and
    rejected faces) and its `top` best scores per person, a face's own person left out (z / s-norms)."""
    inner = prototype_scores(x[rows], y[rows], n, exemplars)
    cohort = np.union1d(rows, rej[:, 0])
    imp = inner(x[cohort])
    own = y[cohort]
    valid = own >= 0
    imp[np.flatnonzero(valid), own[valid]] = -np.inf
    return inner, len(cohort), -np.sort(-imp, axis=0)[: min(top, len(cohort) - 1)]


def fit_snorm(top: int, mode: str = "s", exemplars: int = 5):  # noqa: ANN201
    """Adaptive score normalisation (speaker-verification AS-norm) with the named people as the cohort.
    t: each face's scores normalised by its own `top` best scores for the people (a face that looks like
    everyone scores less); z: each person's scores normalised by the `top` best impostor scores of the other
    people's labelled (and rejected) faces; s: the mean of both."""

    def fit(x, y, rej, n, rows, library):  # noqa: ANN001
        inner, cohort, tops = impostor_tops(x, y, rej, n, rows, top, exemplars)
        k = min(top, cohort - 1, n - 1)
        mu_z, sd_z = tops.mean(axis=0), tops.std(axis=0) + 1e-3

        def score(v: np.ndarray) -> np.ndarray:
            raw = inner(v)
            best = -np.sort(-raw, axis=1)[:, 1 : k + 1]  # the face's best scores for other people
            mu_t, sd_t = best.mean(axis=1, keepdims=True), best.std(axis=1, keepdims=True) + 1e-3
            t = (raw - mu_t) / sd_t
            z = (raw - mu_z) / sd_z
            return {"t": t, "z": z, "s": (t + z) / 2}[mode]

        return score

    return fit


def within_scatter(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    sums = np.zeros((y.max() + 1, x.shape[1]))
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=len(sums))[:, None]
    resid = (x - (sums / np.maximum(counts, 1))[y]).astype(np.float64)
    return resid.T @ resid / max(len(x) - int((counts > 0).sum()), 1)


def fit_nap(k: int, exemplars: int = 5, alpha: float = 1.0):  # noqa: ANN201
    """Nuisance attribute projection: the `k` directions along which the labelled faces of one person vary
    most are removed (alpha 1) or shrunk (alpha < 1); everything else stays the raw space."""

    def fit(x, y, rej, n, rows, library):  # noqa: ANN001
        vals, vecs = np.linalg.eigh(within_scatter(x[rows], y[rows]))
        u = vecs[:, ::-1][:, :k].astype(np.float32)

        def project(v: np.ndarray) -> np.ndarray:
            return unit(v - alpha * (v @ u) @ u.T)

        inner = prototype_scores(project(x[rows]), y[rows], n, exemplars)
        return lambda v: inner(project(v))

    return fit


def fit_shrunk_snorm(top: int, weight: float, exemplars: int = 5):  # noqa: ANN201
    """AS-norm shrunk towards one global normalisation: (g + weight * (t + z) / 2) / (1 + weight), where
    g = (s - mean) / std of the impostor cohort pooled over all people (a scale only), t and z as in
    fit_snorm. Scale-free, so one weight serves every embedding space."""

    def fit(x, y, rej, n, rows, library):  # noqa: ANN001
        inner, _, tops = impostor_tops(x, y, rej, n, rows, top, exemplars)
        k = min(top, n - 1)
        mu_z, sd_z = tops.mean(axis=0), tops.std(axis=0) + 1e-3
        mu_g, sd_g = float(tops.mean()), float(tops.std()) + 1e-3

        def score(v: np.ndarray) -> np.ndarray:
            raw = inner(v)
            best = -np.sort(-raw, axis=1)[:, 1 : k + 1]
            mu_t, sd_t = best.mean(axis=1, keepdims=True), best.std(axis=1, keepdims=True) + 1e-3
            g = (raw - mu_g) / sd_g
            return (g + weight * ((raw - mu_t) / sd_t + (raw - mu_z) / sd_z) / 2) / (1 + weight)

        return score

    return fit


def fit_logreg(c: float, with_rejections: bool = True):  # noqa: ANN201
    def fit(x, y, rej, n, rows, library):  # noqa: ANN001
        # one-vs-rest linear boundaries; a rejected face is an extra negative of the person it was rejected from
        xs, ys = x[rows], y[rows]
        scores_w = np.zeros((n, x.shape[1]), np.float32)
        bias = np.zeros(n, np.float32)
        from sklearn.linear_model import LogisticRegression

        for p in range(n):
            extra = rej[rej[:, 1] == p, 0] if with_rejections else np.empty(0, np.int64)
            xp = np.concatenate([xs, x[extra]])
            tp = np.concatenate([ys == p, np.zeros(len(extra), bool)])
            model = LogisticRegression(C=c, class_weight="balanced", max_iter=200)
            model.fit(xp, tp)
            scores_w[p], bias[p] = model.coef_[0], model.intercept_[0]
        return lambda v: unit(v) @ scores_w.T + bias

    return fit


def fit_sum(first: Callable, second: Callable, weight: float):  # noqa: ANN201
    """Two options' scores added, the second times `weight`."""

    def fit(x, y, rej, n, rows, library):  # noqa: ANN001
        a, b = first(x, y, rej, n, rows, library), second(x, y, rej, n, rows, library)
        return lambda v: a(v) + weight * b(v)

    return fit


def fit_learned_prototypes(steps: int = 200, shrink: float = 0.1, share: float = 0.5, normalise: bool = True):  # noqa: ANN201
    """One learned prototype per person (a cosine-softmax classifier started at the centroids, additive
    margin, pulled back towards them by `shrink`), averaged with the raw exemplar score (`share` learned),
    then the person matcher's adaptive normalisation. Scale and margin follow the space's impostor spread
    (ArcFace: scale 30, margin 0.2), so one setting serves dlib too."""

    def fit(x, y, rej, n, rows, library):  # noqa: ANN001
        import torch
        import torch.nn.functional as F

        from face_pipeline.domain.person_matching import PersonMatcher

        spread = PersonMatcher().fit(x[rows], y[rows]).g_std_
        scale, margin, pull = 1.07 / spread, 5.6 * spread, shrink * (0.0356 / spread) ** 2
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            xs, ys = torch.from_numpy(unit(x[rows])), torch.from_numpy(y[rows])
            centres = F.normalize(torch.zeros(n, x.shape[1]).index_add_(0, ys, xs), dim=1)
            w = centres.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([w], lr=0.01)
            for _ in range(steps):
                wn = F.normalize(w, dim=1)
                logits = scale * (xs @ wn.T - margin * F.one_hot(ys, n))
                loss = F.cross_entropy(logits, ys) + pull * ((wn - centres) ** 2).sum(1).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            learned = F.normalize(w, dim=1).detach().numpy()
        exemplars = prototype_scores(x[rows], y[rows], n)

        def mixed(v: np.ndarray) -> np.ndarray:
            return share * (unit(v) @ learned.T) + (1 - share) * exemplars(v)

        if not normalise:
            return mixed
        return adaptive_normalisation(mixed, x, y, rej, n, rows)

    return fit


def adaptive_normalisation(inner: Scorer, x, y, rej, n, rows, weight: float = 1.0, top: int = 50) -> Scorer:  # noqa: ANN001
    """PersonMatcher's normalisation around any scorer (impostors: other people's labelled faces, rejections)."""
    cohort = np.union1d(rows, rej[:, 0])
    imp = inner(x[cohort])
    own = y[cohort]
    imp[np.flatnonzero(own >= 0), own[own >= 0]] = -np.inf
    tops = -np.sort(-imp, axis=0)[:top]
    mu_z, sd_z = tops.mean(axis=0), tops.std(axis=0) + 1e-3
    mu_g, sd_g = float(tops.mean()), float(tops.std()) + 1e-3
    k = min(top, n - 1)

    def score(v: np.ndarray) -> np.ndarray:
        raw = inner(v)
        best = -np.sort(-raw, axis=1)[:, 1 : k + 1]
        t = (raw - best.mean(axis=1, keepdims=True)) / (best.std(axis=1, keepdims=True) + 1e-3)
        return ((raw - mu_g) / sd_g + weight * (t + (raw - mu_z) / sd_z) / 2) / (1 + weight)

    return score


def fit_person_matcher(weight: float = 1.0):  # noqa: ANN201
    """The recommended option as implemented: face_pipeline.domain.person_matching.PersonMatcher."""

    def fit(x, y, rej, n, rows, library):  # noqa: ANN001
        from face_pipeline.domain.person_matching import PersonMatcher

        faces = np.union1d(rows, rej[:, 0])
        labels = np.where(np.isin(faces, rows), y[faces], -1)
        local = np.searchsorted(faces, rej[:, 0])
        matcher = PersonMatcher(weight=weight).fit(x[faces], labels, np.stack([local, rej[:, 1]], axis=1))
        columns = np.searchsorted(matcher.people_, np.arange(n))
        assert (matcher.people_[columns] == np.arange(n)).all()
        fit.last = matcher  # type: ignore[attr-defined]
        return matcher.scores

    return fit


OPTIONS: dict[str, Callable] = {
    "raw": fit_raw,
    "knn (all labelled faces)": fit_knn,
    "triplet head (seed)": fit_triplet_head,
    "wccn (within-class whitening)": fit_wccn(0.3),
    "lda (two-covariance)": fit_two_cov(0.3, 1.0),
    "nap 5 (nuisance projection)": fit_nap(5),
    "per-person logreg": fit_logreg(10.0),
    "raw + per-person logreg": fit_sum(fit_raw, fit_logreg(10.0), 0.05),
    "z-norm (per person)": fit_znorm(50),
    "s-norm (per person + per face)": fit_snorm(50, "s"),
    "shrunk s-norm w1": fit_shrunk_snorm(50, 1.0),
    "shrunk s-norm w2": fit_shrunk_snorm(50, 2.0),
    "person_matching (adaptive s-norm)": fit_person_matcher(1.0),
    "learned prototypes + exemplars": fit_learned_prototypes(normalise=False),
    "learned prototypes + exemplars + adaptive s-norm": fit_learned_prototypes(),
}
try:
    from benchmarks.learning_transductive import TRANSDUCTIVE_OPTIONS
except ModuleNotFoundError:  # run as a script: benchmarks/ is on sys.path, not the repository root
    from learning_transductive import TRANSDUCTIVE_OPTIONS  # type: ignore[no-redef]

OPTIONS.update(TRANSDUCTIVE_OPTIONS)
QUICK = (
    "raw",
    "knn (all labelled faces)",
    "nap 5 (nuisance projection)",
    "z-norm (per person)",
    "person_matching (adaptive s-norm)",
)


# --- running ----------------------------------------------------------------------------------------------


@dataclass
class Tally:
    errors: int = 0
    missed: int = 0
    wrong: int = 0
    right: int = 0
    given: int = 0
    strangers_named: int = 0
    strangers: int = 0
    heldout: int = 0
    seconds: float = 0.0
    final_errors: int = 0
    matched_errors: int = 0  # errors at the threshold where as many evaluation strangers are named as raw names

    def add(self, pred_q: np.ndarray, truth_q: np.ndarray, pred_s: np.ndarray, seconds: float, final: bool) -> None:
        missed = int((pred_q < 0).sum())
        wrong = int(((pred_q >= 0) & (pred_q != truth_q)).sum())
        self.missed += missed
        self.wrong += wrong
        self.errors += missed + wrong
        self.right += int((pred_q == truth_q).sum())
        self.given += int((pred_q >= 0).sum() + (pred_s >= 0).sum())
        self.strangers_named += int((pred_s >= 0).sum())
        self.strangers += len(pred_s)
        self.heldout += len(pred_q)
        self.seconds += seconds
        if final:
            self.final_errors += missed + wrong


def run_case(case: Case, options: dict[str, Callable], seeds: int, far: float) -> dict[str, Tally]:
    tallies = {name: Tally() for name in ["raw (product thresholds)", "raw", *options]}
    options = {"raw": fit_raw, **options}
    product = thresholds_for_space(case.space)
    for seed in range(seeds):
        lib = build_library(case, seed)
        x, y = case.vectors, lib.person_of
        for rnd in range(1, ROUNDS + 1):
            rows = lib.labelled(rnd)
            q, s, c = lib.heldout, lib.strangers, lib.calibration
            mask_q, mask_s, mask_c = (masked_rows(lib.rejections, r) for r in (q, s, c))
            raw_named = 0
            for name, fit in options.items():
                started = time.perf_counter()
                scorer = fit(x, y, lib.rejections, lib.n_people, rows, lib.library(rnd))
                seconds = time.perf_counter() - started
                by_row = getattr(scorer, "rows", None)  # transductive: every face of the case scored at once
                sq, ss, sc = (by_row(r) for r in (q, s, c)) if by_row else (scorer(x[r]) for r in (q, s, c))
                for row, thr, mar in _variants(name, fit, sc, mask_c, far, product):
                    pred_s = decide(ss, thr, mar, mask_s)
                    tally = tallies.setdefault(row, Tally())
                    tally.add(decide(sq, thr, mar, mask_q), y[q], pred_s, seconds, rnd == ROUNDS)
                    if row == "raw":
                        raw_named = int((pred_s >= 0).sum())
                    tally.matched_errors += matched_errors(sq, y[q], mask_q, ss, mask_s, raw_named)
            print(f"  {case.name} seed {seed} round {rnd}: {len(rows)} labelled faces", file=sys.stderr, flush=True)
    return tallies


def matched_errors(
    sq: np.ndarray, truth: np.ndarray, mask_q: np.ndarray, ss: np.ndarray, mask_s: np.ndarray, named: int
) -> int:
    """Known-people errors at the threshold that names `named` evaluation strangers (margin 0): compares the
    scores' quality at equal strangers named, free of calibration noise (the threshold sees the strangers)."""
    ss = ss.copy()
    if len(mask_s):
        ss[mask_s[:, 0], mask_s[:, 1]] = -np.inf
    best = np.sort(ss.max(axis=1))[::-1]
    threshold = float(np.nextafter(best[min(named, len(best) - 1)], np.float32(np.inf)))
    return int((decide(sq, threshold, 0.0, mask_q) != truth).sum())


def _variants(name, fit, calib_scores, mask_c, far, product):  # noqa: ANN001, ANN202
    """(row name, threshold, margin) to decide with: calibrated on the calibration strangers, and for raw and
    the person matcher the product's own thresholds too (mapped onto the matcher's scale)."""
    scores = calib_scores.copy()
    if len(mask_c):
        scores[mask_c[:, 0], mask_c[:, 1]] = -np.inf
    yield name, calibrate(scores, far, 0.0), 0.0
    if name == "raw":
        yield "raw (product thresholds)", product.threshold, product.margin
    matcher = getattr(fit, "last", None)
    if matcher is not None and hasattr(matcher, "threshold_for"):
        mapped = f"{name} at product thresholds mapped"
        yield mapped, matcher.threshold_for(product.threshold), matcher.margin_for(product.margin)


def report(case: Case, tallies: dict[str, Tally]) -> None:
    base = tallies["raw"].errors
    base_matched = max(tallies["raw"].matched_errors, 1)
    print(f"\n### {case.name}: {len(case.vectors)} faces of {case.photos} photos\n")
    print(
        "| option | errors (missed + wrong) | vs raw | final round | precision | strangers /1000 | fit s "
        "| errors at raw's strangers named | vs raw |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, t in tallies.items():
        if not t.heldout:
            continue
        rel = 1 - t.errors / base if base else float("nan")
        precision = t.right / t.given if t.given else float("nan")
        per_1000 = 1000 * t.strangers_named / max(t.strangers, 1)
        print(
            f"| {name} | {t.errors} ({t.missed} + {t.wrong}) | {rel:+.1%} | {t.final_errors} | {precision:.4f} | "
            f"{per_1000:.1f} | {t.seconds:.1f} | {t.matched_errors} | {1 - t.matched_errors / base_matched:+.1%} |"
        )
        figures = {
            "errors": t.errors,
            "missed": t.missed,
            "wrong": t.wrong,
            "final_round_errors": t.final_errors,
            "relative_reduction": round(rel, 4),
            "precision": round(precision, 5),
            "strangers_named_per_1000": round(per_1000, 2),
            "train_seconds": round(t.seconds, 2),
            "heldout_faces": t.heldout,
            "errors_at_raw_strangers_named": t.matched_errors,
            "relative_reduction_at_raw_strangers_named": round(1 - t.matched_errors / base_matched, 4),
        }
        for metric, value in figures.items():
            line = {"bench": "learning_options", "case": case.name, "option": name, "metric": metric, "value": value}
            print(json.dumps(line))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, fast options only")
    parser.add_argument("--cases", default="dlib,degraded,sharp")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--far", type=float, default=0.005, help="share of calibration strangers named")
    parser.add_argument("--options", default=None, help="comma-separated option names (default: all)")
    args = parser.parse_args(argv)
    options = OPTIONS
    if args.options:
        options = {k: v for k, v in OPTIONS.items() if k == "raw" or k in args.options.split(",")}
    elif args.quick:
        options = {k: v for k, v in OPTIONS.items() if k in QUICK}
    seeds = 1 if args.quick else args.seeds
    for name in args.cases.split(","):
        case = load_case(name)
        report(case, run_case(case, options, seeds, args.far))


if __name__ == "__main__":
    main()
