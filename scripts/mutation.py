"""Mutation testing of the serving and detection core: does the suite fail when the code changes?

    .venv/bin/python scripts/mutation.py [--modules policy,batching] [--jobs 2] [--out reports/mutation]
    .venv/bin/python scripts/mutation.py --recheck reports/mutation/results.json --out reports/mutation

For each core module, mutmut (2.x) makes small edits (an operator, a constant, a comparison, a
string) one at a time and runs the tests that exercise that module; a mutant the tests still pass
on "survived". The work happens in scratch copies of the working tree (tracked and untracked
files), never in the checkout itself. Results: `results.json` and `results.md` (score per module,
every survivor's diff), with survivors judged equivalent (no behaviour can tell them apart) listed
in EQUIVALENT below and counted apart.

Slow on purpose (about an hour on 2 cores): it is a tool for changes to the core, not a CI step.

mutmut 2.x, not 3.x: 3.x loads the suite once in process and forks a child per mutant, and the
suite starts gRPC servers and torch thread pools, which do not survive a fork; 2.x runs the test
command as a fresh process per mutant.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

# scripts/ is on sys.path as this script's own directory.
from mutation_targets import EQUIVALENT, TARGETS

ROOT = Path(__file__).resolve().parents[1]

STATUSES = {
    "ok_killed": "killed",
    "bad_timeout": "timeout",
    "ok_suspicious": "suspicious",
    "bad_survived": "survived",
    "skipped": "skipped",
    "untested": "untested",
}


def scratch_copy(destination: Path) -> None:
    """Tracked and untracked (not ignored) files of the checkout, as they are now."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def existing(tests: tuple[str, ...]) -> list[str]:
    return [t for t in tests if (ROOT / t).exists()]


def pytest_arguments(tests: tuple[str, ...], deselect: tuple[str, ...] = ()) -> list[str]:
    """Stop at the first failure, in file order, with no random order and no cache."""
    return [
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-o",
        "addopts=",
        *[part for test in deselect for part in ("--deselect", test)],
        *existing(tests),
    ]


def run_module(module: str, tests: tuple[str, ...], log_dir: Path, deselect: tuple[str, ...] = ()) -> dict:
    """mutmut over one module in its own scratch copy; returns counts and survivors."""
    with tempfile.TemporaryDirectory(prefix="guard-mutation-") as scratch:
        work = Path(scratch)
        scratch_copy(work)
        # mutmut 2.x counts only exit code 1 as failing tests: a mutant that breaks an import
        # (pytest exits 2 or 4 at collection) would be reported as a survivor. Any failure -> 1.
        runner = (
            f"{sys.executable} -c 'import sys, pytest; sys.exit(1 if pytest.main(sys.argv[1:]) else 0)' "
            + " ".join(pytest_arguments(tests, deselect))
        )
        started = time.monotonic()
        log = (log_dir / (module.replace("/", "_") + ".log")).open("w")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mutmut",
                "run",
                "--paths-to-mutate",
                module,
                "--runner",
                runner,
                "--no-progress",
                "--simple-output",
            ],
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        seconds = time.monotonic() - started
        with sqlite3.connect(work / ".mutmut-cache") as db:
            rows = db.execute(
                "SELECT mutant.id, mutant.status, line.line_number FROM mutant JOIN line ON mutant.line = line.id"
            ).fetchall()
        survivors = []
        for mutant_id, status, number in rows:
            # ok_suspicious is mutmut 2.x's "killed, but the tests took twice as long": detected.
            if status in ("bad_survived", "untested", "skipped"):
                diff = subprocess.run(
                    [sys.executable, "-m", "mutmut", "show", str(mutant_id)], cwd=work, capture_output=True, text=True
                ).stdout.strip()
                survivors.append(
                    {
                        "id": mutant_id,
                        "status": STATUSES[status],
                        "line": number + 1,
                        "diff": diff,
                        "equivalent": equivalence(module, diff),
                    }
                )
        counts: dict[str, int] = {}
        for _, status, _ in rows:
            counts[STATUSES[status]] = counts.get(STATUSES[status], 0) + 1
        return {
            "module": module,
            "tests": list(existing(tests)),
            "counts": counts,
            "seconds": round(seconds),
            "survivors": survivors,
        }


def equivalence(module: str, diff: str) -> str | None:
    """Why the mutant in `diff` is equivalent, if EQUIVALENT lists it: by the line it adds, or, for
    a mutant that only deletes a line, by "deleted: LINE / THE LINE AFTER IT"."""
    lines = diff.splitlines()
    added = [line[1:].strip() for line in lines if line.startswith("+") and not line.startswith("+++")]
    if not added:  # named with the line after it: "@staticmethod" alone could be any of several
        added = [
            f"deleted: {line[1:].strip()} / {after.strip()}"
            for line, after in zip(lines, lines[1:] + [""])
            if line.startswith("-") and not line.startswith("---")
        ]
    for where, text, why in EQUIVALENT:
        if where == module and any(text == line for line in added):
            return why
    return None


def score(result: dict) -> tuple[int, int, int]:
    """(detected, equivalent, total): timeouts and slow kills count as detected (the suite did not pass)."""
    counts = result["counts"]
    total = sum(counts.values())
    detected = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("suspicious", 0)
    equivalent = sum(1 for s in result["survivors"] if s["equivalent"])
    return detected, equivalent, total


def markdown(results: list[dict]) -> str:
    lines = [
        # untested: mutmut stopped before it ran them (it can crash part way); the score counts them as
        # not detected, and --recheck runs them.
        "| module | mutants | killed | timeout | survived | untested | equivalent | score "
        "| score without equivalents | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    all_detected = all_equivalent = all_total = 0
    for r in results:
        detected, equivalent, total = score(r)
        all_detected += detected
        all_equivalent += equivalent
        all_total += total
        c = r["counts"]
        lines.append(
            f"| {r['module']} | {total} | {c.get('killed', 0)} | {c.get('timeout', 0)} | "
            f"{total - detected - c.get('untested', 0)} | {c.get('untested', 0)} | {equivalent} | "
            f"{detected / max(total, 1):.1%} | "
            f"{detected / max(total - equivalent, 1):.1%} | {r['seconds'] / 60:.0f} |"
        )
    lines.append(
        f"| **all** | {all_total} | | | {all_total - all_detected} | | {all_equivalent} | "
        f"**{all_detected / max(all_total, 1):.1%}** | "
        f"**{all_detected / max(all_total - all_equivalent, 1):.1%}** | |"
    )
    for r in results:
        if not r["survivors"]:
            continue
        lines += ["", f"## {r['module']}: survivors", ""]
        for s in r["survivors"]:
            note = f" (equivalent: {s['equivalent']})" if s["equivalent"] else ""
            lines += [f"mutant {s['id']}, line {s['line']}, {s['status']}{note}", "```diff", s["diff"], "```"]
    return "\n".join(lines) + "\n"


def mutated(text: str, survivor: dict) -> str | None:
    """`text` with the survivor's edit applied near its line; None when the code it edits is gone."""
    lines = survivor["diff"].splitlines()
    old = [line[1:] for line in lines if line.startswith("-") and not line.startswith("---")]
    new = [line[1:] for line in lines if line.startswith("+") and not line.startswith("+++")]
    source = text.splitlines(keepends=True)
    for i in sorted(range(len(source)), key=lambda j: abs(j - (survivor["line"] - 1))):
        if source[i].rstrip("\n") == old[0]:
            source[i : i + len(old)] = [line + "\n" for line in new]
            return "".join(source)
    return None


def recheck_module(result: dict, deselect: tuple[str, ...]) -> dict:
    """Run each survivor of an earlier pass again against the tests as they are now, in a scratch
    copy: after tests are added, which of them do the tests kill now? Equivalence is judged again
    with EQUIVALENT as it is now."""
    module, tests = result["module"], TARGETS[result["module"]]
    outcome = {"module": module, "killed": [], "surviving": [], "equivalent": [], "gone": []}
    with tempfile.TemporaryDirectory(prefix="guard-recheck-") as scratch:
        work = Path(scratch)
        scratch_copy(work)
        path = work / module
        original = path.read_text()
        for survivor in result["survivors"]:
            if equivalence(module, survivor["diff"]):
                outcome["equivalent"].append(survivor["id"])
                continue
            text = mutated(original, survivor)
            if text is None:
                outcome["gone"].append(survivor["id"])
                continue
            path.write_text(text)
            failed = (
                subprocess.run(
                    [sys.executable, "-m", "pytest", *pytest_arguments(tests, deselect)], cwd=work, capture_output=True
                ).returncode
                != 0
            )
            outcome["killed" if failed else "surviving"].append(survivor["id"])
            path.write_text(original)
    counts = result["counts"]
    total = sum(counts.values()) - len(outcome["gone"])
    detected = counts.get("killed", 0) + counts.get("timeout", 0) + len(outcome["killed"])
    outcome.update(
        mutants=total,
        detected=detected,
        score=detected / max(total, 1),
        score_without_equivalents=detected / max(total - len(outcome["equivalent"]), 1),
    )
    return outcome


def recheck_markdown(outcomes: list[dict]) -> str:
    lines = [
        "| module | mutants | killed | equivalent | surviving | score | without equivalents |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o['module']} | {o['mutants']} | {o['detected']} | {len(o['equivalent'])} | "
            f"{len(o['surviving'])} (ids {', '.join(map(str, o['surviving'])) or '-'}) | {o['score']:.1%} | "
            f"{o['score_without_equivalents']:.1%} |"
        )
    total = sum(o["mutants"] for o in outcomes)
    detected = sum(o["detected"] for o in outcomes)
    equivalent = sum(len(o["equivalent"]) for o in outcomes)
    lines.append(
        f"| **all** | {total} | {detected} | {equivalent} | "
        f"{sum(len(o['surviving']) for o in outcomes)} | **{detected / max(total, 1):.1%}** | "
        f"**{detected / max(total - equivalent, 1):.1%}** |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", help="comma-separated module stems or paths (default: every target)")
    parser.add_argument("--jobs", type=int, default=2, help="modules mutated at the same time")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "mutation")
    parser.add_argument(
        "--deselect",
        action="append",
        default=[],
        metavar="TEST_ID",
        help="leave out a test whose unmutated run fails on this host (mutmut needs a passing baseline)",
    )
    parser.add_argument(
        "--recheck",
        type=Path,
        metavar="RESULTS_JSON",
        help="instead of mutating: run the survivors of an earlier pass's results.json again "
        "against the tests as they are now (writes recheck.json and recheck.md in --out)",
    )
    args = parser.parse_args(argv)
    if importlib.util.find_spec("mutmut") is None:
        # Without this, every module's run fails inside mutmut and the report reads its empty cache.
        parser.error("mutmut is not installed: pip install -e '.[mutation]' (or run `make mutation`)")
    if args.recheck:
        earlier = [r for r in json.loads(args.recheck.read_text()) if r["module"] in TARGETS]
        with ThreadPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(lambda r: recheck_module(r, tuple(args.deselect)), earlier))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "recheck.json").write_text(json.dumps(outcomes, indent=2) + "\n")
        (args.out / "recheck.md").write_text(recheck_markdown(outcomes))
        print(recheck_markdown(outcomes))
        return 0
    chosen = list(TARGETS)
    if args.modules:
        wanted = args.modules.split(",")
        chosen = [m for m in TARGETS if m in wanted or Path(m).stem in wanted]
        if not chosen:
            parser.error(f"no target matches {wanted}; targets: {', '.join(TARGETS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_module, m, TARGETS[m], args.out, tuple(args.deselect)): m for m in chosen}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            # Written as each module finishes: a run stopped part way keeps the modules it finished.
            results = [done[m] for m in chosen if m in done]
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.out / "results.md").write_text(markdown(results))
            print(f"{futures[future]}: {len(results)} of {len(chosen)} modules done", flush=True)
    print(markdown(results).split("\n\n## ")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
