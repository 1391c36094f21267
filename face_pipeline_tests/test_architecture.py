"""The shape the code review asked for, read from the source with `ast`: domain/ is pure (no storage, services,
front ends or I/O libraries; no file writes), its modules import each other without a cycle, and no import
is hidden behind TYPE_CHECKING to mask one.

Before the redesign domain/checkpoint.py wrote checkpoint files (torch.save, os.replace) and imported
domain/projection.py under TYPE_CHECKING while projection.py imported it back: each test below failed then.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import face_pipeline

PACKAGE = Path(face_pipeline.__file__).resolve().parent
DOMAIN = PACKAGE / "domain"
# What pure logic may not reach: the layers around it, and libraries that do I/O.
OUTER_LAYERS = ("face_pipeline.storage", "face_pipeline.services", "face_pipeline.defs", "face_pipeline.api")
OUTER_LAYERS += ("face_pipeline.cli", "face_pipeline.vision", "face_pipeline_eval")
IO_LIBRARIES = {"dagster", "sqlalchemy", "qdrant_client", "qdrant_edge", "fastapi", "os", "shutil", "pathlib"}
# Calls that read or write files, by how the code spells them.
FILE_CALLS = {"open", "torch.save", "torch.load", "np.save", "np.load", "json.dump", "json.load", "pickle.dump"}


def domain_modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(DOMAIN.glob("*.py"))}


def imported_names(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("module", sorted(domain_modules()))
def test_domain_modules_import_no_outer_layer_and_no_io_library(module: str):
    imports = imported_names(domain_modules()[module])
    bad = [name for name in imports if name.startswith(OUTER_LAYERS) or name.split(".")[0] in IO_LIBRARIES]
    assert not bad, f"domain/{module}.py imports {bad}"


@pytest.mark.parametrize("module", sorted(domain_modules()))
def test_domain_modules_touch_no_files(module: str):
    calls = [
        ast.unparse(node.func)
        for node in ast.walk(domain_modules()[module])
        if isinstance(node, ast.Call) and ast.unparse(node.func) in FILE_CALLS
    ]
    assert not calls, f"domain/{module}.py reads or writes files ({calls}); file I/O belongs to storage/"


def test_no_import_hides_behind_type_checking_in_domain():
    hidden = [
        module
        for module, tree in domain_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    ]
    assert not hidden, f"TYPE_CHECKING imports (a masked import cycle) in domain/{hidden}"


def test_domain_modules_import_each_other_without_a_cycle():
    modules = domain_modules()
    edges = {
        module: {
            name.rsplit(".", 1)[1]
            for name in imported_names(tree)
            if name.startswith("face_pipeline.domain.") and name.rsplit(".", 1)[1] in modules
        }
        for module, tree in modules.items()
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle in domain/: {' -> '.join((*path, module))}"
        if module in done:
            return
        for other in edges[module]:
            visit(other, (*path, module))
        done.add(module)

    for module in modules:
        visit(module, ())
