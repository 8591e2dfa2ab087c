"""Every third-party module geovit's source imports is a declared dependency (pyproject.toml).

Reference: the import statements themselves (ast), mapped to distributions by the installed
metadata (importlib.metadata.packages_distributions), against geovit's own Requires-Dist.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "geovit"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_levels() -> set[str]:
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"geovit", "__future__"}


def test_every_imported_package_is_declared():
    declared = {_canonical(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0]) for r in requires("geovit")}
    dists = packages_distributions()
    undeclared = {
        module: dists.get(module)
        for module in _imported_top_levels()
        if not {_canonical(d) for d in dists.get(module, [module])} & declared
    }
    assert undeclared == {}, f"imported but not in pyproject.toml dependencies: {undeclared}"
