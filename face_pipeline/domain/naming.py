"""Cluster ids that people see and scripts use, and numbers that stay put across runs.

Three kinds of id (stored in `face_instances.cluster_id`). This module owns their format: everything else
builds, parses, filters (SQL LIKE) and validates (API patterns) them through the names below.

| id                        | kind      | meaning                                        |
|---------------------------|-----------|------------------------------------------------|
| ``person_{uuid}``         | person    | assigned to a known person (supervised mode)   |
| ``unknown_cluster_{N}``   | unknown   | a group of similar unnamed faces               |
| ``unknown_noise_{face}``  | noise     | an unnamed face that matches nothing           |

`stable_cluster_numbers` keeps N for "the same" group when the unknown pool is clustered again after new
photos, labels or a new model, so a user who was looking at unknown_cluster_12 finds it again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum

import numpy as np

__all__ = [
    "CLUSTER_ID_FORMS",
    "CLUSTER_ID_PATTERN",
    "LIKE_ESCAPE",
    "NOISE_PREFIX",
    "PERSON_PREFIX",
    "PERSON_REF_PATTERN",
    "UNKNOWN_PREFIX",
    "ClusterKind",
    "cluster_ids",
    "is_person_cluster",
    "kind_by_prefix",
    "like_pattern",
    "noise_cluster_id",
    "parse_cluster_id",
    "person_cluster_id",
    "person_id_of",
    "stable_cluster_numbers",
    "unknown_cluster_id",
]


class ClusterKind(StrEnum):
    PERSON = "person"  # person_{uuid}: faces assigned to a named person
    UNKNOWN = "unknown"  # unknown_cluster_{N}: a group of similar faces nobody named yet
    NOISE = "noise"  # unknown_noise_{face_id}: a face on its own


NOISE = -1  # the cluster label of a face in no group (clustering's output, numbered here)
PERSON_PREFIX = "person_"
UNKNOWN_PREFIX = "unknown_cluster_"
NOISE_PREFIX = "unknown_noise_"
_PREFIXES = {ClusterKind.PERSON: PERSON_PREFIX, ClusterKind.UNKNOWN: UNKNOWN_PREFIX, ClusterKind.NOISE: NOISE_PREFIX}
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*$")  # uuids, integers; no '_' so ids parse unambiguously

# For the API: the ids as stored (person ids are uuid4 hex; numbers and face ids positive, at most 18 digits).
_UUID_HEX = "[0-9a-f]{32}"
_POSITIVE = "[1-9][0-9]{0,17}"
CLUSTER_ID_PATTERN = rf"^({PERSON_PREFIX}{_UUID_HEX}|{UNKNOWN_PREFIX}{_POSITIVE}|{NOISE_PREFIX}{_POSITIVE})$"
# A person given by id: the bare uuid hex or its cluster id (group 1: the uuid).
PERSON_REF_PATTERN = rf"^(?:{PERSON_PREFIX})?({_UUID_HEX})$"
CLUSTER_ID_FORMS = f"`{PERSON_PREFIX}{{uuid}}`, `{UNKNOWN_PREFIX}{{N}}` or `{NOISE_PREFIX}{{face_id}}`"
LIKE_ESCAPE = "\\"


def _token(value: object, what: str) -> str:
    text = str(value)
    if not _TOKEN.match(text):
        raise ValueError(f"{what} must be letters, digits and '-' (a uuid or an integer), got {value!r}")
    return text


def person_cluster_id(person_uuid: object) -> str:
    """``person_{uuid}``. Raises ValueError for an empty id or one with characters other than [A-Za-z0-9-]."""
    return PERSON_PREFIX + _token(person_uuid, "person id")


def unknown_cluster_id(number: int | np.integer) -> str:
    """``unknown_cluster_{N}`` for N >= 1 (N = 0 is never handed out)."""
    if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or number < 1:
        raise ValueError(f"cluster number must be an integer >= 1, got {number!r}")
    return f"{UNKNOWN_PREFIX}{int(number)}"


def noise_cluster_id(face_id: object) -> str:
    """``unknown_noise_{face_id}``."""
    return NOISE_PREFIX + _token(face_id, "face id")


def parse_cluster_id(cluster_id: str) -> tuple[ClusterKind, str | int]:
    """The kind and value of a cluster id: ('person', uuid str), ('unknown', N int) or ('noise', face id str).

    Raises ValueError quoting the id when it is none of the three forms.
    """
    if not isinstance(cluster_id, str):
        raise ValueError(f"cluster id must be a string, got {cluster_id!r}")
    # unknown_noise_ and unknown_cluster_ share 'unknown_': test the longer, specific prefixes first
    if cluster_id.startswith(NOISE_PREFIX):
        rest = cluster_id[len(NOISE_PREFIX) :]
        if _TOKEN.match(rest):
            return ClusterKind.NOISE, rest
    elif cluster_id.startswith(UNKNOWN_PREFIX):
        rest = cluster_id[len(UNKNOWN_PREFIX) :]
        if rest.isdigit() and int(rest) >= 1 and rest == str(int(rest)):
            return ClusterKind.UNKNOWN, int(rest)
    elif cluster_id.startswith(PERSON_PREFIX):
        rest = cluster_id[len(PERSON_PREFIX) :]
        if _TOKEN.match(rest):
            return ClusterKind.PERSON, rest
    raise ValueError(
        f"not a cluster id: {cluster_id!r} (expected person_{{uuid}}, unknown_cluster_{{N}} or "
        "unknown_noise_{face_id})"
    )


def kind_by_prefix(cluster_id: str) -> ClusterKind | None:
    """The kind an id's prefix says, without checking the rest (how the SQL filters classify ids); None for
    an id with none of the three prefixes."""
    for kind in (ClusterKind.NOISE, ClusterKind.UNKNOWN, ClusterKind.PERSON):  # the longer prefixes first
        if cluster_id.startswith(_PREFIXES[kind]):
            return kind
    return None


def is_person_cluster(cluster_id: str | None) -> bool:
    """True for a ``person_{uuid}`` id (by prefix, as the SQL filters see it)."""
    return cluster_id is not None and kind_by_prefix(cluster_id) is ClusterKind.PERSON


def person_id_of(cluster_id: str) -> str | None:
    """The person id in a ``person_{uuid}`` cluster id; None for any other id."""
    return cluster_id[len(PERSON_PREFIX) :] if is_person_cluster(cluster_id) else None


def like_pattern(kind: ClusterKind) -> str:
    """A SQL LIKE pattern (escape character LIKE_ESCAPE) matching the ids of one kind."""
    return _PREFIXES[kind].replace("_", LIKE_ESCAPE + "_") + "%"


def stable_cluster_numbers(
    new_labels: np.ndarray,
    face_ids: np.ndarray,
    previous: Mapping[object, int] | tuple[np.ndarray, np.ndarray],
    next_free: int,
) -> tuple[np.ndarray, int]:
    """Numbers N for this run's clusters, reusing last run's N for the same group.

    new_labels : (n,) int, this run's cluster per face, 0..L-1, NOISE (-1) for none
    face_ids : (n,) the faces' ids (any comparable values, unique)
    previous : last run's numbers of the faces that were in an unknown cluster: a mapping face id -> N,
        or a pair of arrays (face ids (p,), N (p,)). Faces of last run that are gone are simply absent.
    next_free : the lowest number never handed out (stored by the caller between runs)

    Rule. A new cluster C and an old cluster O (restricted to faces still present) *continue* each other
    when their overlap is more than half of C or more than half of O. Among continuing pairs, largest
    overlap first (ties: the smaller old number, then the smaller new label), each new cluster takes the
    number of one old cluster and each old number goes to at most one new cluster. So a cluster that
    grows, shrinks, or loses a few faces keeps N; when an old cluster splits, its larger part keeps N;
    when two merge, the merged cluster keeps the number of the one it shares more faces with. Every other
    new cluster gets a fresh number from `next_free`; numbers are never reused.

    Returns (numbers, next_free): numbers is (L,) int64 with numbers[label] = N (L = max label + 1; -1 for
    a label not present), and the new lowest never-used number.
    """
    new_labels = np.asarray(new_labels, dtype=np.int64)
    face_ids = np.asarray(face_ids)
    if face_ids.shape != new_labels.shape or new_labels.ndim != 1:
        raise ValueError(
            f"new_labels and face_ids must be 1-D of the same length, got {new_labels.shape!r} and {face_ids.shape!r}"
        )
    if (new_labels < NOISE).any():
        raise ValueError(f"labels must be >= 0 or NOISE ({NOISE}), got {int(new_labels.min())}")
    prev_ids, prev_numbers = _previous_arrays(previous)
    if prev_numbers.size and int(prev_numbers.min()) < 1:
        raise ValueError(f"previous cluster numbers must be >= 1, got {int(prev_numbers.min())}")
    if prev_numbers.size and next_free <= int(prev_numbers.max()):
        raise ValueError(
            f"next_free must exceed every previous number (max {int(prev_numbers.max())}), got {next_free!r}"
        )
    if next_free < 1:
        raise ValueError(f"next_free must be >= 1, got {next_free!r}")
    n_labels = int(new_labels.max(initial=NOISE)) + 1
    numbers = np.full(n_labels, -1, dtype=np.int64)
    new_sizes = np.bincount(new_labels[new_labels != NOISE], minlength=n_labels)

    # old number of each current face (0 = none), by sorted lookup (no loop over faces)
    old_of_face = np.zeros(len(face_ids), dtype=np.int64)
    if prev_ids.size and len(face_ids):
        all_ids = np.concatenate([face_ids.astype(object), prev_ids.astype(object)])
        codes = np.unique(all_ids, return_inverse=True)[1]
        cur_codes, prev_codes = codes[: len(face_ids)], codes[len(face_ids) :]
        by_code = np.argsort(prev_codes)
        pos = np.searchsorted(prev_codes[by_code], cur_codes)
        pos = np.minimum(pos, len(prev_codes) - 1)
        hit = prev_codes[by_code][pos] == cur_codes
        old_of_face[hit] = prev_numbers[by_code][pos[hit]]

    carried = (new_labels != NOISE) & (old_of_face > 0)
    old_present = old_of_face[old_of_face > 0]
    old_numbers, old_sizes = np.unique(old_present, return_counts=True)
    if carried.any():
        pair_keys, overlap = np.unique(
            np.stack([new_labels[carried], old_of_face[carried]], axis=1), axis=0, return_counts=True
        )
        new_of_pair, old_of_pair = pair_keys[:, 0], pair_keys[:, 1]
        old_size_of_pair = old_sizes[np.searchsorted(old_numbers, old_of_pair)]
        continues = (2 * overlap > new_sizes[new_of_pair]) | (2 * overlap > old_size_of_pair)
        order = np.lexsort((new_of_pair, old_of_pair, -overlap))
        used_old: set[int] = set()
        for i in order[continues[order]]:  # a loop over cluster pairs, not faces
            label, old = int(new_of_pair[i]), int(old_of_pair[i])
            if numbers[label] == -1 and old not in used_old:
                numbers[label] = old
                used_old.add(old)
    fresh = np.flatnonzero((numbers == -1) & (new_sizes > 0))
    numbers[fresh] = next_free + np.arange(len(fresh))
    return numbers, int(next_free + len(fresh))


def _previous_arrays(previous: Mapping[object, int] | tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(previous, Mapping):
        ids = np.asarray(list(previous.keys()), dtype=object)
        numbers = np.asarray(list(previous.values()), dtype=np.int64)
    else:
        ids, numbers = (np.asarray(a) for a in previous)
        numbers = numbers.astype(np.int64)
    if ids.shape != numbers.shape or ids.ndim != 1:
        raise ValueError(f"previous ids and numbers must be 1-D of one length, got {ids.shape!r} and {numbers.shape!r}")
    return ids, numbers


def cluster_ids(labels: np.ndarray, face_ids: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """The id of every face of the unknown pool: ``unknown_cluster_{numbers[label]}`` for clustered faces,
    ``unknown_noise_{face_id}`` for NOISE. labels, face_ids: (n,); numbers from `stable_cluster_numbers`.
    Returns (n,) object array of str.
    """
    labels = np.asarray(labels, dtype=np.int64)
    face_ids = np.asarray(face_ids)
    if labels.shape != face_ids.shape:
        raise ValueError(f"labels and face_ids must have one shape, got {labels.shape!r} and {face_ids.shape!r}")
    out = np.empty(len(labels), dtype=object)
    clustered = labels != NOISE
    nums = np.asarray(numbers, dtype=np.int64)[labels[clustered]]
    if (nums < 1).any():
        raise ValueError("numbers has no number for some clustered label")
    out[clustered] = np.char.add(UNKNOWN_PREFIX, nums.astype(str)).astype(object)
    out[~clustered] = np.char.add(NOISE_PREFIX, face_ids[~clustered].astype(str)).astype(object)
    return out
