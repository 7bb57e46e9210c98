"""
No module reaches into another object's private state.

Walks the AST of every module under ``txhyperswarm/`` and fails on any
attribute access ``x._name`` whose ``x`` is not ``self``, ``cls`` or
``super()``, and on any ``from module import _name``: layers talk through
public methods and the interfaces in ``txhyperswarm/interfaces.py``
(ARCHITECTURE.md). Dunder names are public protocol and not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "txhyperswarm"

#: (path relative to txhyperswarm/, source of the expression) -> why it is allowed.
ALLOWED = {
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_our_module(package, name: str) -> bool:
    """``from txhyperswarm.dht import _wire`` imports a package-private module: allowed."""
    if not package or not package.startswith("txhyperswarm"):
        return False
    base = PACKAGE.parent.joinpath(*package.split("."), name)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _own(value: ast.AST) -> bool:
    if isinstance(value, ast.Name) and value.id in ("self", "cls"):
        return True
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def reaches(path: Path, root: Path = PACKAGE):
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root).as_posix()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and not _own(node.value):
            yield rel, node.lineno, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name) and not _is_our_module(node.module, alias.name):
                    yield rel, node.lineno, f"from {node.module} import {alias.name}"


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if not p.name.endswith("_pb2.py"))


def test_the_walk_sees_every_module_and_catches_a_reach(tmp_path):
    assert len(modules()) > 20
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from m import _hidden, shown\n"
        "from txhyperswarm.dht import _wire\n"
        "class C(B):\n"
        "    def f(self, other):\n"
        "        return other._secret + self._mine + super()._base + self.__class__\n"
    )
    assert [e for _, _, e in reaches(sample, tmp_path)] == ["from m import _hidden", "other._secret"]


def test_no_module_reads_or_writes_another_objects_private_attributes():
    found = [(rel, line, expr) for p in modules() for rel, line, expr in reaches(p) if (rel, expr) not in ALLOWED]
    assert not found, "private reaches:\n" + "\n".join(f"  txhyperswarm/{r}:{n}: {e}" for r, n, e in found)


def test_every_allowlist_entry_is_still_needed():
    present = {(rel, expr) for p in modules() for rel, _, expr in reaches(p)}
    assert set(ALLOWED) <= present, f"stale allowlist entries: {sorted(set(ALLOWED) - present)}"
