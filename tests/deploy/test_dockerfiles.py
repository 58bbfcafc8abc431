"""Static checks of the Dockerfiles in deploy/docker: hadolint, the runtime image's contract (non-root
user, ports, health check, the `guard serve` command line, the model repository), each Dockerfile's
.dockerignore against what it copies, and the CUDA image's onnxruntime swap. No Docker engine is
needed."""

from __future__ import annotations

import fnmatch
import re
import shlex

import pytest
import yaml

from tests.deploy.helpers import DOCKER, ROOT, run

DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(hadolint, dockerfile):
    result = run([hadolint, "--no-color", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def instructions(dockerfile):
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip()
    ]


def final_stage(dockerfile):
    steps = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def dockerignore_allows(rules, path):
    """Docker's .dockerignore semantics: the last matching pattern wins; `!` re-includes."""
    allowed = True
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            allowed = negate
    return allowed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_contract(dockerfile):
    stage = final_stage(dockerfile)
    ops = dict(stage)  # the last of each instruction in the runtime stage
    user = ops["USER"].split(":")[0]
    assert user not in {"root", "0"}, "the image must run as a non-root user"
    assert set(ops["EXPOSE"].split()) == {"8001", "8002"}
    options, _, probe = ops["HEALTHCHECK"].partition("CMD")
    assert "healthcheck.py" in probe and "--start-period" in options  # loading the repository takes seconds
    command = yaml.safe_load(ops["ENTRYPOINT"]) + yaml.safe_load(ops["CMD"])  # exec form: JSON arrays
    assert command[:2] == ["guard", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--grpc-port") + 1] == "8001"
    assert command[command.index("--metrics-port") + 1] == "8002"
    # /metrics answers outside the container (the guard binds it to 127.0.0.1 unless told); no reflection.
    assert command[command.index("--metrics-host") + 1] == "0.0.0.0"
    assert "--no-reflection" in command
    # The package's default repository is relative to its source tree, so an installed image must name one.
    assert command[command.index("--repository") + 1] == "/models"
    copies = [args for op, args in stage if op == "COPY" and "--from=" not in args]
    assert any(shlex.split(c)[-1] == "/models" for c in copies), "the image must carry the model repository"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_lets_in_what_the_image_copies(dockerfile):
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name}: BuildKit's per-Dockerfile ignore file is missing"
    rules = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    sources = []
    for op, args in instructions(dockerfile):
        if op == "COPY" and "--from=" not in args:
            sources += [s for s in shlex.split(args)[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
        assert dockerignore_allows(rules, source), f"{ignore.name} keeps {source} out of the build context"
    for unwanted in (".venv", ".git", "results", "examples/guard_examples/zoo", "tests", "guard/__pycache__"):
        assert not dockerignore_allows(rules, unwanted), f"{ignore.name} lets {unwanted} into the build context"


def test_cuda_image_swaps_in_onnxruntime_gpu():
    text = (DOCKER / "Dockerfile.cuda").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\w.-]+-runtime-", text, re.M)
    assert "onnxruntime-gpu==" in text and "uninstall -y onnxruntime" in text
    assert "download.pytorch.org/whl/cpu" in (DOCKER / "Dockerfile").read_text()
