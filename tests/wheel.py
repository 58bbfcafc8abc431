"""guard as a user installs it: its wheel in a fresh virtualenv outside the checkout.

Shared by the library's wheel tests (tests/tools/test_wheel_install.py) and the examples' (a camera
plan evaluated by the installed `guard`). The venv borrows the project venv's third-party packages
through a .pth file naming its site-packages; the .pth files inside that directory are not run, so
neither the checkout's editable guard nor the examples are importable there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ("pyproject.toml", "README.md")


def user_env() -> dict[str, str]:
    """The user's environment minus anything that would put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run(args: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command as the user would; fails the test, with its output, unless it exits 0."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


def install_wheel(base: Path) -> Path:
    """Build guard's wheel from a copy of its packaging files (the checkout gets no build/ or
    egg-info), install it with --no-deps into a venv under `base`; returns the venv."""
    source = base / "source"
    shutil.copytree(ROOT / "guard", source / "guard", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in PACKAGING:
        shutil.copyfile(ROOT / name, source / name)
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-w", base / "dist", source],
        cwd=base,
    )
    (wheel,) = (base / "dist").glob("guard-*.whl")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    python = venv / "bin" / "python"
    # Install before the venv can see the project's packages, so pip finds no other guard to replace.
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
        cwd=base,
    )
    purelib = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base).stdout.strip()
    )
    (purelib / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv
