"""engine/kernels stands alone: it imports nothing of engine.kv, engine.model or the engine core (the KV and
the model's weights reach it as engine/kernels/protocols.py's structural types)."""

import ast

from tests.helpers.paths import REPO

KERNELS = REPO / "engine" / "kernels"


def _engine_imports(path) -> list[str]:
    """The engine modules one file imports (absolute, or relative resolved from engine.kernels)."""
    package = ["engine", *path.parent.relative_to(REPO / "engine").parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found += [f"{module}.{alias.name}" for alias in node.names] if module in ("engine", "") else [module]
    return [name for name in found if name == "engine" or name.startswith("engine.")]


def test_the_kernels_import_only_themselves_of_the_engine():
    files = sorted(KERNELS.rglob("*.py"))
    assert len(files) >= 8
    outside = {f"{path.relative_to(REPO)}: {name}" for path in files for name in _engine_imports(path)
               if not (name + ".").startswith("engine.kernels.")}
    assert not outside
