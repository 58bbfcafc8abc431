"""Recipe for `toxicity`: the offensive-language classifier that `alt-profanity-check` 1.9.1 ships (a
TF-IDF vectorizer and a sigmoid-calibrated LinearSVC, two joblib files), converted to ONNX with
skl2onnx and written as a guard model directory with the text detectors.

    python -m guard_examples.toxicity [--out build/text-models/toxicity] [--force]

Nothing is trained and nothing is random: the build is a conversion, checked against the joblib
pipeline's `predict_proba` on every real text the guard would serve (guard_examples.toxicity_data's
texts and VADER's tweets and NYT sentences, each within MAX_CHARS; VADER's as text_data.vader reads
them, the ambiguous ratings left out) and failing below AGREEMENT identical labels or past
MAX_ABS_DIFF in probability.

ONNX contract: input `text` STRING [batch, 1], one text per row (the graph lower-cases, tokenizes
and weighs the words itself, so the guard's preprocess kind is `strings`); outputs `probabilities`
FP32 [batch, 2] (clean, toxic) and `logits` FP32 [batch, 2], their logarithm (floored at
PROBABILITY_FLOOR): what the guard reads as a classifier's logits, whose softmax is the
probabilities again.

Conversion options, each measured while this recipe was written:
- tokens: scikit-learn's pattern `(?u)\\b\\w\\w+\\b` matches Unicode word characters; skl2onnx
  replaces it by `[a-zA-Z0-9_]+`, which splits every accented word ("pokémon" -> "pok", "mon") and
  changed 2 labels of the 12,659 review snippets, probabilities by up to 0.19. TOKENS, the same
  pattern in RE2's terms, agrees on every real text.
- StringNormalizer locale "C": ONNX Runtime's default, en_US.UTF-8, is missing on hosts like this one
  and the session then fails to load. Under "C" only ASCII capitals are lower-cased (scikit-learn
  lower-cases all: "POKÉMON" stays unmatched); no real text here differs for it.

No stop words reach the StringNormalizer (skl2onnx takes them from `stop_words_`, which this pickled
vectorizer lacks): English stop words are simply not in the vocabulary, and a row of one stop word,
or of no word at all, stays a row of its own.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import tomlkit

from guard.api import References, TensorSpec, utf8_rows
from guard_examples import builds, camera, sentiment_net, text_data, toxicity_data
from guard_examples.paths import PACKAGE, WORKSPACE

log = logging.getLogger(__name__)

DISTRIBUTION = "alt-profanity-check"
MODULE = "profanity_check"
FILES = ("data/vectorizer.joblib", "data/model.joblib")
DEFAULT_ROOT = Path("build/text-models")
NAME = "toxicity"
COMMAND = "python -m guard_examples.toxicity --out build/text-models/toxicity"
RECIPE_SOURCES = (
    "toxicity",
    "toxicity_card",
    "toxicity_data",
    "text_data",
    "camera",
)  # camera: the card's and metrics' writers
PACKAGES = (DISTRIBUTION, "scikit-learn", "joblib", "skl2onnx", "onnx", "onnxruntime", "scattertext")

CLASSES = ("clean", "toxic")
INPUT = TensorSpec("text", "BYTES", (1,))
MAX_CHARS = 2000
"""The guard refuses longer texts (preprocess.max_chars); 7 convention and debate lines are longer."""
TOKENS = r"[\p{L}\p{N}_]{2,}"
"""scikit-learn's `(?u)\\b\\w\\w+\\b` for RE2: runs of two or more letters, digits or underscores."""
PROBABILITY_FLOOR = 1e-12
"""float32 rounds a certain class's rival to 0: floored before the logarithm, so logits stay finite."""
OPSET = 17
AGREEMENT = 0.999
MAX_ABS_DIFF = 1e-4
BATCH = 256

DETECTORS: list[dict[str, Any]] = [
    {"name": "spelling", "type": "spelling"},
    # A monitor: on a toxicity model one offensive word legitimately carries the answer, so deleting
    # it moves the answer as a trigger's removal would. Judging, it called 45 of the 50 toxic test
    # rows triggers; watched, its score and suspect words still reach guard_explain and the metrics.
    {"name": "word_deletion", "type": "word_deletion", "monitor": True},
]
"""The text detectors that need nothing but the model's answers (frequency substitution needs an
encoder's embedding space, Mahalanobis a features output: a TF-IDF model has neither)."""


def package_dir() -> Path:
    """profanity_check's folder inside the installed package (found, not imported: importing it
    loads both files)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{DISTRIBUTION} is not installed: pip install --no-deps '{DISTRIBUTION}==1.9.1'")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def load_pipeline():
    """The package's vectorizer and classifier as one scikit-learn Pipeline (text -> probabilities)."""
    import joblib
    from sklearn.pipeline import Pipeline

    vectorizer, classifier = (joblib.load(package_dir() / name) for name in FILES)
    return Pipeline([("tfidf", vectorizer), ("classifier", classifier)])


def joblib_probabilities(texts: list[str]) -> np.ndarray:
    """[N, 2] probabilities (clean, toxic) of the joblib pipeline, float64."""
    return load_pipeline().predict_proba(texts)


def _prune(graph) -> None:
    """Drop the nodes and initializers no graph output depends on (skl2onnx's `label` branch)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):  # topologically sorted: consumers come after producers
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def export_onnx(path: Path) -> Path:
    """The pipeline as ONNX: `text` STRING [batch, 1] -> `probabilities` and `logits` FP32 [batch, 2]."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer

    options = {
        TfidfVectorizer: {"tokenexp": TOKENS, "locale": "C"},
        CalibratedClassifierCV: {"zipmap": False},
    }
    model = convert_sklearn(
        load_pipeline(),
        NAME,
        initial_types=[(INPUT.name, StringTensorType([None, 1]))],
        options=options,
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    graph = model.graph
    del graph.output[:]
    graph.output.extend(
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 2]) for name in ("probabilities", "logits")]
    )
    graph.initializer.append(helper.make_tensor("probability_floor", TensorProto.FLOAT, [], [PROBABILITY_FLOOR]))
    graph.node.extend(
        [
            helper.make_node("Max", ["probabilities", "probability_floor"], ["floored"]),
            helper.make_node("Log", ["floored"], ["logits"]),
        ]
    )
    _prune(graph)
    model.doc_string = f"{DISTRIBUTION} {camera.version(DISTRIBUTION)} converted by guard_examples.toxicity"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def onnx_probabilities(path: Path, texts: list[str]) -> np.ndarray:
    """[N, 2] probabilities of the ONNX model under ONNX Runtime, in batches of BATCH."""
    session = sentiment_net.onnx_session(path)
    rows = np.array(texts, dtype=object).reshape(-1, 1)
    parts = [session.run(["probabilities"], {INPUT.name: rows[i : i + BATCH]})[0] for i in range(0, len(rows), BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.float32)


def agreement(reference: np.ndarray, exported: np.ndarray) -> dict[str, float]:
    diff = np.abs(reference - exported).max(axis=1)
    return {
        "n": len(diff),
        "label_agreement": float((reference.argmax(1) == exported.argmax(1)).mean()),
        "max_abs_diff": float(diff.max()),
        "within_tolerance": float((diff <= MAX_ABS_DIFF).mean()),
    }


@functools.cache
def _labelled() -> dict[str, tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]]:
    out = {}
    for split in text_data.SPLITS:
        rows = [(s, t) for s, t in toxicity_data.split_texts(split) if len(t) <= MAX_CHARS]
        texts = tuple(t for _, t in rows)
        out[split] = (texts, joblib_probabilities(list(texts)).argmax(1), tuple(s for s, _ in rows))
    return out


def texts(split: str) -> tuple[list[str], np.ndarray]:
    """(texts, labels int64: 1 where the joblib model says toxic) of one split, texts of at most
    MAX_CHARS characters: the labels are the model's own predictions, not a person's."""
    if split not in text_data.SPLITS:
        raise ValueError(f"split must be one of {tuple(text_data.SPLITS)}, not {split!r}")
    found, labels, _ = _labelled()[split]
    return list(found), labels.astype(np.int64)


def references(split: str, limit: int | None = None) -> References:
    """A split as the guard's clients send it, with the model's labels (calibration, held-out test)."""
    found, labels = texts(split)
    return References({INPUT.name: utf8_rows(found[:limit], INPUT)}, labels[:limit])


def config(name: str = NAME) -> tomlkit.TOMLDocument:
    """The guard's config.toml, thresholds still to be written by `guard calibrate`."""
    document = tomlkit.document()
    document.add(tomlkit.comment("Written by guard_examples.toxicity; `guard calibrate` writes the thresholds."))
    document.update(
        {"name": name, "platform": "onnxruntime_onnx", "policy": "flag", "target_fpr": 0.05, "logits_output": "logits"}
    )
    document["inputs"] = tomlkit.aot()
    document["inputs"].append({"name": INPUT.name, "datatype": "BYTES", "shape": list(INPUT.shape)})
    document["outputs"] = tomlkit.aot()
    for output in ("logits", "probabilities"):
        document["outputs"].append({"name": output, "datatype": "FP32", "shape": [len(CLASSES)]})
    document["preprocess"] = {"kind": "strings", "input": INPUT.name, "output": INPUT.name, "max_chars": MAX_CHARS}
    document["batching"] = {"max_batch_size": 32, "max_queue_delay_microseconds": 2000}
    document["detectors"] = tomlkit.aot()
    for table in DETECTORS:
        document["detectors"].append(table)
    return document


def measure(model: Path) -> dict[str, Any]:
    """Counts of every text set and the export's agreement with joblib on each."""
    corpus = toxicity_data.corpus()
    sets = {source: [t for t in found if len(t) <= MAX_CHARS] for source, found in corpus.items()}
    over = {source: len(corpus[source]) - len(kept) for source, kept in sets.items()}
    for name in text_data.VADER_FILES:  # out of domain: measured, never calibrated on
        found = text_data.vader(name)[0]
        sets[f"vader_{name}"] = [t for t in found if len(t) <= MAX_CHARS]
        over[f"vader_{name}"] = len(found) - len(sets[f"vader_{name}"])
    figures, counts = {}, {}
    for name, found in sets.items():
        reference = joblib_probabilities(found)
        figures[name] = agreement(reference, onnx_probabilities(model, found))
        counts[name] = {"n": len(found), "toxic": int(reference.argmax(1).sum()), "over_limit": over[name]}
    splits = {}
    for split in text_data.SPLITS:
        _, labels, sources = _labelled()[split]
        by_source = Counter(sources)
        splits[split] = {
            "n": len(labels),
            "toxic": int(labels.sum()),
            "sources": {source: by_source[source] for source in toxicity_data.SOURCES},
        }
    return {"sets": counts, "splits": splits, "agreement": figures}


def check(m: dict[str, Any]) -> None:
    for name, a in m["agreement"].items():
        if a["label_agreement"] < AGREEMENT or a["max_abs_diff"] > MAX_ABS_DIFF:
            raise RuntimeError(f"the ONNX export disagrees with the joblib pipeline on {name}: {a}")


def build(out: Path, name: str = NAME) -> dict[str, Any]:
    """Convert, check, configure and describe the model in `out` (its config names the model `name`,
    the directory it ends up in); returns its metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = export_onnx(out / "model.onnx")
    metrics = measure(model)
    check(metrics)
    (out / "config.toml").write_text(tomlkit.dumps(config(name)))
    pipeline = load_pipeline()
    metrics |= {
        "terms": len(pipeline.named_steps["tfidf"].vocabulary_),
        "folds": len(pipeline.named_steps["classifier"].calibrated_classifiers_),
        "onnx_bytes": model.stat().st_size,
        "seconds": time.perf_counter() - start,
    }
    camera.write_json(out / "metrics.json", metrics)
    # Imported here: the card reads this module's constants (a module-level import would be a cycle).
    from guard_examples.toxicity_card import write_card

    write_card(out, metrics)
    log.info("toxicity: %s", json.dumps(metrics["agreement"]))
    return metrics


def fingerprint() -> dict[str, Any]:
    sources = hashlib.sha256()
    for module in RECIPE_SOURCES:
        sources.update((PACKAGE / f"{module}.py").read_bytes())
    return {
        "model": NAME,
        "recipe_sha256": sources.hexdigest(),
        "packages": {dist: camera.version(dist) for dist in PACKAGES},
        "vader_sdist_sha256": text_data.VADER_SDIST_SHA256,
    }


def build_into(directory: Path, cached: bool = True) -> dict[str, Any]:
    """`build` into `directory`, atomically (builds.build_atomically): a complete directory or none."""
    return builds.build_atomically(directory, lambda out: build(out, directory.name), fingerprint(), cached)


def ensure_built(root: Path = DEFAULT_ROOT) -> Path:
    """The model's directory under `root` (relative roots from the checkout's root), built when
    missing or stale (its build.json is not this recipe's fingerprint)."""
    root = Path(root) if Path(root).is_absolute() else WORKSPACE / root
    directory, wanted = root / NAME, fingerprint()
    if not builds.is_current(directory, wanted):
        log.info("building the text model %s into %s", NAME, directory)
        build_into(directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    builds.recipe_main(argv, __doc__, DEFAULT_ROOT / NAME, fingerprint, build_into)


if __name__ == "__main__":
    main()
