"""Each package's public surface is exactly its ``__all__``, and the layering holds."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("secure_fml", "privacy", "aggregation", "audits")


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_only_existing_public_names(name: str) -> None:
    mod = importlib.import_module(name)
    exported = list(mod.__all__)
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    for item in exported:
        assert not item.startswith("_"), item
        assert hasattr(mod, item), f"{name}.__all__ lists missing {item}"


def _imports(pkg: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {(str(path), a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path), node.module.split(".")[0]))
    return found


@pytest.mark.parametrize(
    ("pkg", "forbidden"),
    [
        ("privacy", {"secure_fml", "audits", "aggregation"}),
        ("aggregation", {"secure_fml", "audits"}),
        ("secure_fml", {"audits"}),
    ],
)
def test_one_way_dependency_rule(pkg: str, forbidden: set[str]) -> None:
    bad = sorted(f"{p}: {m}" for p, m in _imports(pkg) if m in forbidden)
    assert not bad, bad


def test_errors_are_one_hierarchy() -> None:
    import aggregation
    import privacy
    import secure_fml

    assert secure_fml.SecureFMLError is privacy.SecureFMLError
    for name in ("ConfigError", "PrivacyBudgetExhausted", "DataError"):
        assert issubclass(getattr(privacy, name), privacy.SecureFMLError)
    assert aggregation is not None


def test_no_print_in_library_code() -> None:
    for pkg in ("privacy", "aggregation", "secure_fml", "audits"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name == "cli.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                    raise AssertionError(f"print() in library code: {path}:{node.lineno}")
