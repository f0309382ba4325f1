"""The four packages are layers, and imports only run down:

    inbox_daemon  →  adapters, storage  →  config

``config`` is the floor every package shares (the configuration model, the canonical row, the
error tree); ``adapters`` (a file becomes judged Arrow batches) and ``storage`` (a transaction)
know nothing of each other or of the daemon. Read from the code itself (imports inside
functions included), so a shortcut taken under time pressure fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "config": set(),
    "adapters": {"config"},
    "storage": {"config"},
    "inbox_daemon": {"config", "adapters", "storage"},
}


def _imports(package: str):
    """(file, line, imported top-level package) for every import of another of the four."""
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in ALLOWED and top != package:
                    yield path.relative_to(ROOT).as_posix(), node.lineno, top


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    upward = [f"{file}:{line} imports {top}" for file, line, top in _imports(package)
              if top not in ALLOWED[package]]
    assert not upward, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing'}: {upward}"
