"""Sample the gateway process with py-spy while a load runs, and summarise the hottest frames.

py-spy attaches from outside (ptrace), so the gateway runs unmodified; `--nonblocking` keeps it
from pausing the process at each sample.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def start_recording(pid: int, out: Path, duration: float, rate: int = 250) -> subprocess.Popen | None:
    """py-spy record of `pid` for `duration` seconds into `out` (collapsed stacks); None without py-spy."""
    executable = py_spy()
    if executable is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            executable,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration))),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_recording(process: subprocess.Popen | None, out: Path) -> dict | None:
    if process is None:
        return {"error": "py-spy not found"}
    _, err = process.communicate(timeout=60)
    if process.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed ({process.returncode}): {err.strip()[-500:]}"}
    return top_frames(out)


# Frames that enclose every sample of the gateway's main thread: they say nothing about where time goes.
_ENCLOSING = ("guard/__main__.py", "guard/cli.py")


def _frame(text: str) -> tuple[str, bool]:
    """("function (file)", whether it is the gateway's own code). py-spy writes
    "function (path/to/file.py:LINE)"; the line changes within a function, so it is dropped."""
    function, _, where = text.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    own = path.startswith("guard/") and path not in _ENCLOSING
    return (f"{function} ({path if own else '/'.join(Path(path).parts[-2:])})" if path else function), own


def top_frames(collapsed: Path, count: int = 12) -> dict:
    """Share of samples per function: `self` (where the CPU was, any code) and `inclusive` (on the
    stack; the gateway's own functions only, since the event loop and thread pool enclose everything).
    Time in grpc.aio's compiled core shows as self time of asyncio's `Handle._run`."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(samples)
        total += n
        own[frames[-1][0]] += n
        for frame in dict.fromkeys(name for name, ours in frames if ours):  # stack order: stable ties
            inclusive[frame] += n

    def share(counter):
        return [[frame, n / total] for frame, n in counter.most_common(count)] if total else []

    return {"samples": total, "file": str(collapsed), "self": share(own), "inclusive": share(inclusive)}
