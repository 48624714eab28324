"""The columnar package's shape: public names only across packages, modules of a readable size,
and the rules written once (in headwater.windowing.rules)."""

from __future__ import annotations

import ast
import io
import pathlib
import tokenize

import pytest

import headwater

_SRC = pathlib.Path(headwater.__file__).parent
_COLUMNAR = sorted((_SRC / "columnar").glob("*.py"))
# Plain-Python oracles the tests and the bench compare the engines with: they must not share the
# engines' code, so they write the rules out on their own.
_ORACLES = {"devtools/reference.py", "devtools/plain_script.py"}


@pytest.mark.parametrize("path", _COLUMNAR, ids=lambda p: p.name)
def test_columnar_imports_only_public_names_of_other_packages(path):
    """No module of headwater.columnar imports an underscore name from outside the package."""
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("headwater.")
        and not (node.module or "").startswith("headwater.columnar")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


@pytest.mark.parametrize("path", _COLUMNAR, ids=lambda p: p.name)
def test_columnar_modules_stay_a_few_hundred_lines(path):
    """Each module of the package is at most ~600 lines."""
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 600


def _code(path: pathlib.Path) -> str:
    """The module's code with its strings and comments blanked (docstrings may quote a rule)."""
    text = path.read_text("utf-8")
    lines = text.splitlines(keepends=True)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in (tokenize.STRING, tokenize.COMMENT):
            continue
        (first, start), (last, end) = token.start, token.end
        for row in range(first - 1, last):
            line = lines[row]
            left = start if row == first - 1 else 0
            right = end if row == last - 1 else len(line.rstrip("\n"))
            lines[row] = line[:left] + " " * (right - left) + line[right:]
    return "".join(lines)


@pytest.mark.parametrize("pattern", ["anchor + ", "np.mod(ts"])
def test_the_rules_are_written_only_in_windowing_rules(pattern):
    """The dedup horizon and window arithmetic appear in code only in windowing/rules.py."""
    found = [
        str(path.relative_to(_SRC))
        for path in sorted(_SRC.rglob("*.py"))
        if str(path.relative_to(_SRC)) not in {"windowing/rules.py", *_ORACLES}
        and pattern in _code(path)
    ]
    assert found == []
