"""privacy-specific checks: no asserts in the bottom layer, and the error tree is complete.

The exported surface and the layering of every package are checked in
``tests/test_public_api.py``.
"""

from __future__ import annotations

import ast
import enum
from pathlib import Path

import privacy

PKG = Path(privacy.__file__).parent


def test_no_print_or_assert_in_library_code() -> None:
    for f in PKG.glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            assert not isinstance(node, ast.Assert), f"assert in {f.name}:{node.lineno}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"print in {f.name}:{node.lineno}"


def test_error_tree_docstring_lists_every_error() -> None:
    from privacy import errors as _errors

    doc = _errors.__doc__ or ""
    for name in _errors.__all__:
        assert name in doc, name
        obj = getattr(_errors, name)
        if name == "RefusalReason":  # the one non-exception: the reason a Refused carries
            assert issubclass(obj, enum.Enum)
            continue
        assert issubclass(obj, _errors.SecureFMLError), name
