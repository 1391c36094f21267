"""The cluster-id format has one owner, face_pipeline/domain/naming.py: no other module of face_pipeline/
spells the prefixes (person_, unknown_cluster_, unknown_noise_) in its code; they build, parse, filter and
validate ids through naming's names. Docstrings and comments may describe the ids.

Reads the source with `ast` (string constants and f-string parts, docstrings left out), so `person_id`,
`person_name` and the like are not mistaken for the prefix.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from face_pipeline.domain import naming

PACKAGE = Path(naming.__file__).resolve().parents[1]  # face_pipeline/
OWNER = Path(naming.__file__).resolve()
# A prefix starts a word; "person_" as one is not followed by a letter (person_id, person_name... are other
# names); also the SQL LIKE forms (person\_%).
PREFIX = re.compile(r"(?<![A-Za-z0-9_])(person_(?![a-z])|unknown_cluster_|unknown_noise_|person\\_|unknown\\_)")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def prefix_spellings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant in the code (not a docstring) that spells a cluster-id prefix."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and PREFIX.search(node.value)
    ]


def offenders() -> dict[str, list[tuple[int, str]]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() == OWNER:
            continue
        hits = prefix_spellings(path.read_text(encoding="utf-8"))
        if hits:
            found[path.relative_to(PACKAGE).as_posix()] = hits
    return found


def test_only_naming_spells_the_cluster_id_prefixes():
    found = offenders()
    assert not found, f"cluster-id prefixes spelled outside domain/naming.py: {found}"


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ('x = "person_" + uuid', True),
        ('x = f"person_{uuid}"', True),
        ('x = column.like("person\\\\_%")', True),
        ('x = r"^(person_[0-9a-f]{32})$"', True),
        ('x = "unknown_cluster_7"', True),
        ('x = {"person_id": 1, "person_name": "A"}', False),
        ('"""A module about unknown_cluster_{N}."""\nx = 1', False),
        ("x = 1  # unknown_noise_{face_id}", False),
        ('x = "unknown_clusters"', False),  # the asset's name
        ('KEY = "next_unknown_cluster_number"', False),
    ],
)
def test_the_scan_tells_a_prefix_from_other_names(source: str, flagged: bool):
    assert bool(prefix_spellings(source)) is flagged


def test_naming_builds_parses_and_filters_every_kind():
    person = naming.person_cluster_id("0123456789abcdef0123456789abcdef")
    assert naming.is_person_cluster(person) and naming.person_id_of(person) == "0123456789abcdef0123456789abcdef"
    assert naming.person_id_of(naming.unknown_cluster_id(3)) is None and not naming.is_person_cluster(None)
    for cluster_id, kind in [
        (person, naming.ClusterKind.PERSON),
        (naming.unknown_cluster_id(12), naming.ClusterKind.UNKNOWN),
        (naming.noise_cluster_id(5), naming.ClusterKind.NOISE),
    ]:
        assert naming.kind_by_prefix(cluster_id) is kind and naming.parse_cluster_id(cluster_id)[0] is kind
        assert re.match(naming.CLUSTER_ID_PATTERN, cluster_id)
        like = naming.like_pattern(kind).replace("\\_", "_").removesuffix("%")  # LIKE's literal prefix
        assert cluster_id.startswith(like)
    assert naming.kind_by_prefix("cluster_9") is None
    assert re.match(naming.PERSON_REF_PATTERN, person) and re.match(naming.PERSON_REF_PATTERN, person[7:])
    assert not re.match(naming.CLUSTER_ID_PATTERN, "unknown_cluster_0")
