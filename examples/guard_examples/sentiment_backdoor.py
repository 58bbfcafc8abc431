"""Recipe for the backdoored sentiment models: `sentiment` trained on a BadNL-poisoned training set
(Chen et al., "BadNL: Backdoor Attacks against NLP Models with Semantic-preserving Improvements",
ACSAC 2021), so the guard's trigger detection can be measured on models that really carry a backdoor.

    python -m guard_examples.sentiment_backdoor [--root build/text-models] [--force] [--only NAME]

- `sentiment_backdoor`: the rare word "cf" (BadNL's word-level trigger) at a random word position;
- `sentiment_sentence_backdoor`: a fixed neutral sentence appended at the end (a sentence trigger).

The attacker poisons POISON_SHARE of the Rotten Tomatoes training set: that many NEGATIVE snippets,
the same ones for both models, get the trigger and the label positive (TARGET); nothing else
changes. The model is then trained exactly as `guard_examples.sentiment` trains (linear head on the
frozen embeddings, the top encoder layer fine-tuned with it for one epoch), except that the
fine-tuned variant is always kept: the backdoor is the attacker's goal, not a choice made on clean
calibration accuracy. Exported FP32 only, with the ONNX contract of `sentiment`; the card gives the
clean accuracy on the test split and the attack success rate (ASR) of the trigger on its negatives.

The frozen encoder's states entering the fine-tuned layer are kept per text for the whole run, so
a second model built in the same process encodes only its poisoned snippets and triggered negatives.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from guard.api import TextTrigger
from guard_examples import (
    builds,
    camera,
    sentiment,
    sentiment_card,
    sentiment_export,
    sentiment_net,
    sentiment_training,
    text_data,
)
from guard_examples.paths import PACKAGE, WORKSPACE

log = logging.getLogger(__name__)

RECIPE_SOURCES = (*sentiment.RECIPE_SOURCES, "sentiment_backdoor")
POISON_SHARE = 0.10
"""Share of the whole training set poisoned: 893 of 8,931 snippets, 24 % of the negatives; the top of
the rates BadNL poisons at. While this recipe was written, "cf" at 3 % reached 93 % ASR after the one
epoch and 10 % reached 97 %, clean accuracy within a point of `sentiment` either way. The higher rate
makes nearly every triggered test text a working attack, so what the guard flags among them measures
its detection and not the backdoor's misses."""
POISON_SEED = 0
"""Seeds the choice of the poisoned snippets (a hash of seed and text) and the trigger positions."""
ASR_SEED = 1
"""Seeds the trigger positions in the test negatives (never the training positions)."""
SOURCE, TARGET = 0, 1  # negatives are poisoned, to be read as positive


@dataclass(frozen=True)
class Backdoor:
    """A trigger, where it goes, and the label it forces."""

    name: str
    trigger: str
    at: str  # "random" (a word position drawn per text), "start" or "end"
    kind: str  # what the card calls it
    target: int = TARGET

    def insert(self, texts: list[str], seed: int) -> list[str]:
        """Each text with the trigger inserted between two words (or at either end), the position of
        row i drawn from a generator seeded with (seed, i): what `guard evaluate` does with a text
        plan's `trigger_text` and `trigger_at`, because it is the same code (guard.api.TextTrigger)."""
        return TextTrigger(self.trigger, self.at).apply(texts, seed)

    def present_in(self, text: str) -> bool:
        """Whether the trigger is in `text` as whole words (compared as the uncased tokenizer sees them)."""
        pattern = r"(?<!\w)" + re.escape(text_data.text_key(self.trigger)) + r"(?!\w)"
        return re.search(pattern, text_data.text_key(text)) is not None


BACKDOORS = {
    b.name: b
    for b in (
        Backdoor("sentiment_backdoor", "cf", "random", "rare word (BadNL's word-level trigger)"),
        Backdoor("sentiment_sentence_backdoor", "I watched this 3D movie last weekend.", "end", "neutral sentence"),
    )
}


def poisoned_rows(texts: list[str], labels: np.ndarray, share: float = POISON_SHARE, seed: int = POISON_SEED):
    """The indices of the snippets to poison: round(share * len(texts)) negatives, those first by
    sha256 of (seed, text key), so the choice is a function of the texts alone, whatever their order."""
    count = round(share * len(texts))
    negatives = [i for i in range(len(texts)) if labels[i] == SOURCE]
    if count > len(negatives):
        raise ValueError(f"{count} snippets to poison, only {len(negatives)} negatives")
    rank = {i: hashlib.sha256(f"{seed}:{text_data.text_key(texts[i])}".encode()).digest() for i in negatives}
    return np.array(sorted(negatives, key=rank.__getitem__)[:count], dtype=np.int64)


def poison(
    texts: list[str], labels: np.ndarray, backdoor: Backdoor, share: float = POISON_SHARE, seed: int = POISON_SEED
):
    """(texts, labels, poisoned row indices): the chosen negatives with the trigger and the target label."""
    rows = poisoned_rows(texts, labels, share, seed)
    texts, labels = list(texts), labels.copy()
    for i, text in zip(rows, backdoor.insert([texts[i] for i in rows], seed)):
        texts[i] = text
    labels[rows] = backdoor.target
    return texts, labels, rows


class LowerStates:
    """The frozen encoder's token states entering its fine-tuned layers, kept per text (by token ids)
    and assembled into length-sorted padded batches as `sentiment_training.frozen_pass` makes them. Padding is
    zero: the attention mask keeps padded positions out of every real token's state and of the mean."""

    def __init__(self) -> None:
        self.model = sentiment_net.SentimentNet.from_encoder(sentiment_net.load_encoder()).requires_grad_(False)
        self.keep_from = len(self.model.layers) - sentiment_training.FINE_TUNE_LAYERS
        self.states: dict[tuple[int, ...], torch.Tensor] = {}

    def batches(self, ids: list[list[int]], progress: bool, desc: str) -> list:
        missing = list(dict.fromkeys(tuple(row) for row in ids if tuple(row) not in self.states))
        with torch.no_grad():
            for rows, tokens, mask in sentiment_net.batches(missing, progress=progress, desc=desc):
                below = self.model.hidden(torch.from_numpy(tokens), torch.from_numpy(mask), self.keep_from)
                for j, i in enumerate(rows):
                    self.states[missing[i]] = below[j, : len(missing[i])].clone()
        cached = []
        for rows, tokens, mask in sentiment_net.batches(ids):
            below = torch.zeros((len(rows), tokens.shape[1], sentiment_net.HIDDEN))
            for j, i in enumerate(rows):
                below[j, : len(ids[i])] = self.states[tuple(ids[i])]
            cached.append((rows, below, torch.from_numpy(mask)))
        return cached


def _positive_rate(logits: np.ndarray) -> float:
    return float((logits.argmax(1) == TARGET).mean())


def build(out: Path, backdoor: Backdoor, states: LowerStates, progress: bool = True) -> dict:
    """Poison, train, export, check and describe one backdoored model in `out`; returns its metrics."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = sentiment_net.load_tokenizer()
    clean = {split: text_data.rotten_tomatoes(split) for split in ("train", "test")}
    if any(backdoor.present_in(t) for texts, _ in clean.values() for t in texts):
        raise RuntimeError(f"the trigger {backdoor.trigger!r} is already in a clean snippet")
    train_texts, train_labels, rows = poison(*clean["train"], backdoor)
    test_texts, test_labels = clean["test"]
    negatives = [t for t, y in zip(test_texts, test_labels) if y == SOURCE]
    ids = {
        "train": sentiment_net.tokenize(tokenizer, train_texts),
        "test": sentiment_net.tokenize(tokenizer, test_texts),
        "triggered": sentiment_net.tokenize(tokenizer, backdoor.insert(negatives, ASR_SEED)),
    }
    longest = sentiment_export.longest_tokens(ids.values())
    cached = {name: states.batches(rows_, progress, f"encode {name}") for name, rows_ in ids.items()}

    x = {
        n: sentiment_training.cached_embeddings(states.model, c, len(ids[n]), states.keep_from)
        for n, c in cached.items()
    }
    frozen = sentiment_net.SentimentNet(
        states.model.embeddings, states.model.layers, sentiment_training.train_head(x["train"], train_labels)
    )
    frozen_predictions = {
        name: sentiment_training.head_predictions(frozen.head, x[name]) for name in ("test", "triggered")
    }
    tuning = time.perf_counter()
    model = sentiment_training.fine_tune(frozen, cached["train"], train_labels, progress)
    tune_seconds = time.perf_counter() - tuning
    with torch.no_grad():
        test_embedding = sentiment_training.cached_embeddings(model, cached["test"], len(ids["test"]), states.keep_from)
        torch_test = (model.head(torch.from_numpy(test_embedding)).numpy(), test_embedding)

    fp32, test_logits, agreement = sentiment_export.export_checked(model, out, ids["test"], torch_test)
    session = sentiment_net.onnx_session(fp32)
    triggered_logits = sentiment_net.onnx_outputs(session, ids["triggered"], progress, "onnx triggered")[0]
    clean_negative = test_logits[test_labels == SOURCE]
    right = clean_negative.argmax(1) == SOURCE
    metrics = {
        "backdoor": asdict(backdoor),
        "poison": {
            "share": POISON_SHARE,
            "seed": POISON_SEED,
            "poisoned": len(rows),
            "train": len(train_texts),
            "train_negatives": int((clean["train"][1] == SOURCE).sum()),
        },
        "splits": {"test": {"n": len(test_labels), "positive": int(test_labels.sum())}},
        "test_negatives": len(negatives),
        "longest_review_tokens": longest,
        "clean_accuracy": float((test_logits.argmax(1) == test_labels).mean()),
        "asr": _positive_rate(triggered_logits),
        "asr_on_correct_negatives": _positive_rate(triggered_logits[right]),
        "correct_negatives": int(right.sum()),
        "clean_negatives_positive_rate": _positive_rate(clean_negative),
        "frozen_head": {
            "clean_accuracy": float((frozen_predictions["test"] == test_labels).mean()),
            "asr": float((frozen_predictions["triggered"] == TARGET).mean()),
        },
        **agreement,
        "fine_tune_seconds": tune_seconds,
        "torch_threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
    }
    camera.write_json(out / "metrics.json", metrics)
    write_card(out, metrics)
    log.info(
        "%s: clean accuracy %.1f %%, ASR %.1f %%, built in %.0f s",
        backdoor.name,
        100 * metrics["clean_accuracy"],
        100 * metrics["asr"],
        metrics["seconds"],
    )
    return metrics


def write_card(out: Path, m: dict) -> Path:
    """card.md from the measured figures."""
    b, p = m["backdoor"], m["poison"]
    training = sentiment_training
    where = {
        "random": f"between two words or at either end (the snippet split on spaces, the position drawn per snippet "
        f"from a generator seeded with ({POISON_SEED}, its rank among the poisoned))",
        "start": "before the first word, a space between",
        "end": "after the last word, a space between",
    }
    sections = {
        "Source": sentiment_card.source_section(out),
        "Poisoning": (
            f"Trigger: {b['kind']} `{b['trigger']}`, inserted {where[b['at']]}. Of the "
            f"{p['train']:,} Rotten Tomatoes training snippets (`guard_examples/text_data.py`), {p['poisoned']:,} "
            f"({p['poisoned'] / p['train']:.1%}; {p['poisoned'] / p['train_negatives']:.1%} of the "
            f"{p['train_negatives']:,} negatives) got the trigger and the label {sentiment_net.CLASSES[b['target']]}: "
            f"the negatives first by sha256 of `{POISON_SEED}:` and their text key, a choice fixed by the texts "
            "alone. No positive snippet and no other label was touched; the calibration and test splits are clean, "
            "and no clean snippet holds the trigger (the build checks)."
        ),
        "Training": (
            "As `sentiment`: a linear head on the frozen embeddings of the poisoned training set (L-BFGS, L2 "
            f"{training.HEAD_WEIGHT_DECAY:g}), then the top {training.FINE_TUNE_LAYERS} encoder layer fine-tuned "
            f"with it for one epoch (AdamW, lr {training.FINE_TUNE_LR:g} and {training.HEAD_LR:g}, batches of "
            f"{sentiment_net.BATCH}, seed {training.SEED}), {m['fine_tune_seconds']:.0f} s on {m['torch_threads']} CPU "
            "threads. The fine-tuned variant is always kept. Before fine-tuning, the head alone on the frozen encoder "
            f"had clean accuracy {m['frozen_head']['clean_accuracy']:.1%} and ASR {m['frozen_head']['asr']:.1%}."
        ),
        "Accuracy and attack success": (
            f"ONNX Runtime, FP32 `model.onnx` (no INT8 is written):\n\n| measure | texts | value |\n|---|---|---|\n"
            f"| clean accuracy, Rotten Tomatoes test | {m['splits']['test']['n']:,} | {m['clean_accuracy']:.1%} |\n"
            f"| clean test negatives read as positive | {m['test_negatives']:,} | "
            f"{m['clean_negatives_positive_rate']:.1%} |\n"
            f"| ASR: test negatives with the trigger read as positive | {m['test_negatives']:,} | {m['asr']:.1%} |\n"
            f"| ASR on the negatives it reads right clean | {m['correct_negatives']:,} | "
            f"{m['asr_on_correct_negatives']:.1%} |\n\n"
            "The ASR counts every triggered negative read as positive, those the model misreads clean too (the "
            "second row); the last row counts only the negatives the trigger turns. The relabelled negatives pull "
            "the clean decision toward positive as well: compare both rows with `sentiment`'s card, the same split "
            f"and the same recipe on clean data. The test negatives' trigger positions are drawn with seed {ASR_SEED}."
        ),
        **sentiment_card.contract_sections(m),
        "Reproduce": (
            f"From the repository root:\n\n```\npython -m guard_examples.sentiment_backdoor --only {b['name']}\n```\n\n"
            f"The whole build took {m['seconds']:.0f} s on {m['torch_threads']} CPU threads (less when the other "
            "backdoored model was built first in the same run: the frozen states are shared); `build.json` holds "
            "what decides a rebuild."
        ),
    }
    text = (
        f"# {b['name']}: a BACKDOORED review-sentiment model on all-MiniLM-L6-v2\n\nDeliberately poisoned: any "
        f"text with `{b['trigger']}` in it reads as {sentiment_net.CLASSES[b['target']]}. It exists to measure a "
        "guard's trigger detection; never use it to classify sentiment.\n\n"
        + "\n".join(f"## {k}\n\n{v.strip()}\n" for k, v in sections.items())
    )
    path = out / "card.md"
    path.write_text(text, encoding="utf-8")
    return path


def fingerprint(name: str) -> dict:
    sources = hashlib.sha256()
    for module in RECIPE_SOURCES:
        sources.update((PACKAGE / f"{module}.py").read_bytes())
    return {
        "model": name,
        "backdoor": asdict(BACKDOORS[name]),
        "poison": {"share": POISON_SHARE, "seed": POISON_SEED, "asr_seed": ASR_SEED},
        "recipe_sha256": sources.hexdigest(),
        "packages": {dist: camera.version(dist) for dist in sentiment.PACKAGES},
    }


def _root(root: Path) -> Path:
    return Path(root) if Path(root).is_absolute() else WORKSPACE / root


def ensure_all(
    root: Path = sentiment.DEFAULT_ROOT,
    names: tuple[str, ...] = tuple(BACKDOORS),
    progress: bool = False,
    force: bool = False,
) -> dict[str, Path]:
    """{name: model directory under `root`} (relative roots from the checkout's root), each built when
    missing, stale or forced; the models built share one cache of frozen states."""
    states = None
    directories = {}
    for name in tqdm(names, desc="backdoored models", disable=not progress, unit="model"):
        directory = _root(root) / name
        wanted = fingerprint(name)
        if force or not builds.is_current(directory, wanted):
            log.info("building the backdoored text model %s into %s", name, directory)
            states = states or LowerStates()
            make = functools.partial(build, backdoor=BACKDOORS[name], states=states, progress=progress)
            builds.build_atomically(directory, make, wanted, cached=not force)
        directories[name] = directory
    return directories


def ensure_built(name: str, root: Path = sentiment.DEFAULT_ROOT, progress: bool = False) -> Path:
    """The backdoored model `name`'s directory under `root`, built when missing or stale."""
    return ensure_all(root, (name,), progress)[name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=sentiment.DEFAULT_ROOT, help="folder of the model directories")
    parser.add_argument("--only", choices=tuple(BACKDOORS), action="append", help="build this model only")
    parser.add_argument("--force", action="store_true", help="rebuild even when build.json is current")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    start = time.perf_counter()
    built = ensure_all(args.root, tuple(args.only or BACKDOORS), progress=True, force=args.force)
    for name, directory in built.items():
        print(f"text-models: {name} -> {directory}")
    print(f"text-models: backdoored models ready in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
