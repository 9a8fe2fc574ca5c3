"""The architecture, enforced: layers import one way, and a package is used through its face.

  * engine/ imports nothing of the server or storage; storage/ nothing of the engine or the server.
  * Inside the engine: kv/ and kernels/ import nothing of each other, of model/ or of the engine's core;
    model/ uses kv/ and kernels/; the core (engine/*.py) uses all three.
  * Code outside a package imports its face (`from engine.kv import KVStore`), never its insides
    (`from engine.kv.store import KVStore`); every package states its face in __init__.py's __all__.
"""

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

CODE = ("engine", "storage", "chatserver", "bench")
FORBIDDEN = {
    "engine": {"aiohttp", "sqlalchemy", "aiosqlite", "alembic", "storage", "chatserver"},
    "storage": {"aiohttp", "engine", "chatserver", "transformers"},
}
# a profiler instruments the insides it times: bench/step_profile.py wraps the runner's attention call
INSTRUMENTED = {("bench.step_profile", "engine.model.runner")}
ENGINE_PARTS = {  # what each part of the engine may import of the engine
    "engine.kv": {"engine.kv"},
    "engine.kernels": {"engine.kernels"},
    "engine.model": {"engine.model", "engine.kv", "engine.kernels"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by the file: `from a.b import c` counts as a.b, and as a.b.c when
    a.b.c is a module of this repository that a.b's face (its __all__) does not offer."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            offered = _face(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names
                      if a.name not in offered and _is_module(f"{node.module}.{a.name}")]
    return names


def _face(package: str) -> set[str]:
    """The names a package's __init__.py lists in __all__ (empty for a module or a package without one)."""
    init = REPO.joinpath(*package.split("."), "__init__.py")
    if not init.is_file():
        return set()
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def _is_module(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _packages() -> set[str]:
    return {_module_name(p) for top in CODE[:3] for p in (REPO / top).rglob("__init__.py")}


def _files(top: str) -> list[Path]:
    files = sorted((REPO / top).rglob("*.py"))
    assert files
    return files


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_no_layer_above_it(package):
    for path in _files(package):
        bad = {name.split(".")[0] for name in _imports(path)} & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


@pytest.mark.parametrize("part", sorted(ENGINE_PARTS))
def test_engine_parts_import_one_way(part):
    for path in _files(part.replace(".", "/")):
        for name in _imports(path):
            if name == "engine" or name.startswith("engine."):
                allowed = any(name == p or name.startswith(p + ".") for p in ENGINE_PARTS[part])
                assert allowed, f"{path.relative_to(REPO)} imports {name}: {part} may use only {sorted(ENGINE_PARTS[part])}"


@pytest.mark.parametrize("top", CODE)
def test_code_outside_a_package_imports_its_face_only(top):
    packages = _packages()
    for path in _files(top):
        here = _module_name(path)
        for name in _imports(path):
            if name in packages:
                continue  # a package's face
            owner = max((p for p in packages if name.startswith(p + ".")), key=len, default=None)
            if owner is None or here == owner or here.startswith(owner + ".") or (here, name) in INSTRUMENTED:
                continue  # not inside a package, or imported from inside the same package
            assert name == owner, f"{path.relative_to(REPO)} imports {name}: use the face `{owner}`"


def test_every_package_states_its_face():
    for package in sorted(_packages()):
        init = REPO.joinpath(*package.split("."), "__init__.py")
        assert "__all__" in init.read_text(), f"{init.relative_to(REPO)} has no __all__"
