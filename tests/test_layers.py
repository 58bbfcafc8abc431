"""The package's layering, lint and types, checked by their own tools on every run: import-linter
against the contracts in pyproject.toml (guard.protocol < guard.backends < guard.detection <
guard.serving < guard.tools; the library never imports the examples, benchmarks/ or tests/; the
examples import guard only through guard.api), ruff (lint and format), and mypy with the
[tool.mypy] settings there (guard.protocol and guard.detection under --strict). The library's
tests import no example either: they read the demo's files, and test guard as a user installs it."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess:
    executable = BIN / tool if (BIN / tool).exists() else shutil.which(tool)
    assert executable, f"{tool} is not installed (pip install -e '.[dev]')"
    return subprocess.run([str(executable), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = run("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_ruff_is_clean():
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_formatted():
    # `ruff format` was applied to the whole tree once; this keeps it that way.
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean():
    # The files and settings are [tool.mypy]'s; /dev/null as the cache: the suite writes nothing into
    # the checkout (like lint-imports --no-cache above).
    result = run("mypy", "--cache-dir", "/dev/null")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found"), result.stdout


def _imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_tests_import_no_example():
    # import-linter sees packages; tests/ is a tree of scripts, so its imports are read here.
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imported(path) if n.split(".")[0] == "guard_examples")
        for path in (ROOT / "tests").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}
