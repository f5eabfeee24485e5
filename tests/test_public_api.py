"""Each package's public surface is exactly its ``__all__``, and the layering holds.

One parametrized test for every package (httpx's ``test_exported_members`` idea):
the public names a package defines are exactly ``__all__``; implementation modules
are private; imports go one way (privacy <- aggregation <- secure_fml <- audits);
no package reaches into another package's private modules.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "privacy",
    "aggregation",
    "secure_fml",
    "secure_fml.data",
    "secure_fml.deploy",
    "audits",
)
TOP = ("privacy", "aggregation", "secure_fml", "audits")
#: Public modules besides ``__init__``: the one errors module, and secure_fml's own.
PUBLIC_MODULES = {
    "privacy": {"errors"},
    "aggregation": set(),
    "audits": {"cli"},
}


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_are_exactly_all(name: str) -> None:
    mod = importlib.import_module(name)
    exported = list(mod.__all__)
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    public = {
        n
        for n, v in vars(mod).items()
        if not n.startswith("_")
        and not isinstance(v, types.ModuleType)
        and not (inspect.isfunction(v) and v.__module__ == "__future__")
        and n != "annotations"
    }
    assert public == set(exported), (
        f"{name}: defined but not exported {sorted(public - set(exported))}; "
        f"exported but missing {sorted(set(exported) - public)}"
    )


@pytest.mark.parametrize("pkg", sorted(PUBLIC_MODULES))
def test_implementation_modules_are_private(pkg: str) -> None:
    for f in (ROOT / pkg).glob("*.py"):
        stem = f.stem
        assert stem == "__init__" or stem.startswith("_") or stem in PUBLIC_MODULES[pkg], f


def _imports(pkg: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {(str(path), a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path), node.module))
                found |= {(str(path), f"{node.module}.{a.name}") for a in node.names}
    return found


@pytest.mark.parametrize(
    ("pkg", "forbidden"),
    [
        ("privacy", {"secure_fml", "audits", "aggregation"}),
        ("aggregation", {"secure_fml", "audits"}),
        ("secure_fml", {"audits"}),
        ("audits", set()),
    ],
)
def test_one_way_dependency_rule(pkg: str, forbidden: set[str]) -> None:
    bad = sorted(f"{p}: {m}" for p, m in _imports(pkg) if m.split(".")[0] in forbidden)
    assert not bad, bad


@pytest.mark.parametrize("pkg", TOP)
def test_no_package_imports_another_packages_private_modules(pkg: str) -> None:
    bad = []
    for path, mod in _imports(pkg):
        parts = mod.split(".")
        if parts[0] in TOP and parts[0] != pkg and any(p.startswith("_") for p in parts[1:]):
            bad.append(f"{path}: {mod}")
    assert not bad, sorted(bad)


def test_errors_are_one_hierarchy_reexported_by_every_layer() -> None:
    import aggregation
    import privacy
    import privacy.errors as errors
    import secure_fml
    import secure_fml.errors

    assert set(secure_fml.errors.__all__) == set(errors.__all__)
    for name in errors.__all__:
        obj = getattr(errors, name)
        assert getattr(secure_fml.errors, name) is obj, name
        assert getattr(privacy, name) is obj, name
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, errors.SecureFMLError), name
    # Errors raised by the other layers are members of the same tree.
    from aggregation import SecAggConfig

    with pytest.raises(errors.ConfigError):
        SecAggConfig(num_clients=2)
    assert secure_fml.SecureFMLError is errors.SecureFMLError
    assert aggregation.ServerSession.__module__.startswith("aggregation.")


def test_no_print_in_library_code() -> None:
    for pkg in TOP:
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name == "cli.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                    raise AssertionError(f"print() in library code: {path}:{node.lineno}")
