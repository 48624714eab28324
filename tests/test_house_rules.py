"""The house rules a newcomer relies on, checked over every module of the package:

* a module over 600 lines says why at its top (``Over 600 lines: ...`` in its docstring);
* no module imports another package's private name (``from headwater.io.x import _y`` in
  ``headwater.pipelines``): what crosses a package boundary is public.
(The import layers themselves are import-linter's contract, run by ``make lint``.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "headwater"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _package_of(path: Path) -> str:
    """``headwater.<first package>`` of a module (``headwater`` for top-level modules)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_long_module_says_why_at_its_top(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if len(text.splitlines()) <= 600:
        return
    docstring = ast.get_docstring(ast.parse(text)) or ""
    assert "Over 600 lines:" in docstring.split("\n\n", 2)[1], (
        f"{path.name} has {len(text.splitlines())} lines and no 'Over 600 lines: <why>' "
        "paragraph after its first line"
    )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_is_imported_across_packages(path: Path) -> None:
    home = _package_of(path)
    crossing = [
        f"from {node.module} import {alias.name}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("headwater")
        for alias in node.names
        if alias.name.startswith("_")
        and not alias.name.startswith("__")
        and ".".join(node.module.split(".")[:2]) != home
    ]
    assert not crossing, f"{path.relative_to(PACKAGE)} ({home}): {crossing}"
