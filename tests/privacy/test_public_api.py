"""The public surface: ``__all__`` is complete, importable, and the layering holds."""

from __future__ import annotations

import ast
import enum
import types
from pathlib import Path

import privacy

PKG = Path(privacy.__file__).parent


def test_all_names_exist_and_are_unique() -> None:
    assert len(set(privacy.__all__)) == len(privacy.__all__)
    for name in privacy.__all__:
        assert hasattr(privacy, name), name


def test_all_lists_every_public_name() -> None:
    public = {
        n
        for n, v in vars(privacy).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(privacy.__all__)


def test_implementation_modules_are_private() -> None:
    for f in PKG.glob("*.py"):
        assert f.name in ("__init__.py", "errors.py") or f.name.startswith("_"), f.name


def test_privacy_never_imports_upper_layers() -> None:
    forbidden = {"secure_fml", "aggregation", "audits"}
    for f in PKG.glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            mods: list[str] = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            for m in mods:
                assert m.split(".")[0] not in forbidden, f"{f.name} imports {m}"


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
