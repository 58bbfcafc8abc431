"""Query-attack detection on a text model: black-box character and word attacks against the sentiment
model through the live gateway, and benign clients reading reviews, through each candidate rule.

    python -m benchmarks.text_query_attacks --out reports/text-query-attacks [--texts 20] [--budget 200]

A gateway serves the examples' sentiment model (guard_examples.sentiment: MiniLM fine-tuned on the
Rotten Tomatoes snippets) without detectors, `[clients] query_attack = "flag"`. Its fingerprints
read a text's characters (guard.detection.texts.symbol_rows). The attacks are guard's own
(guard.tools.evaluation.text_attacks): swap, insert, delete and homoglyph (DeepWordBug's edits),
and greedy word substitution from the examples' FGWS neighbours table. Each asks the gateway one
text per request and sees only its probabilities, on the first `--texts`
test reviews the model gets right, `--budget` queries each. Every query and its answer are recorded
(the attack never sees the flag, so its stream does not depend on the rule) and replayed offline
through each rule of guard.detection.queries with the served settings, one client per attacked
review. Benign clients: one reading `--benign` test reviews, and one reading as many of VADER's
out-of-domain tweets; each sends every text twice (a client retrying), in its own order.

Recorded per attack run: the query its rule flags first and the query that succeeded (the attack
stops at its first flip, so that is its last query when it succeeded).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomlkit
from tqdm import tqdm

from guard.detection.neighbours import load_neighbours
from guard.detection.queries import QuerySettings, QueryStore, fingerprints
from guard.detection.texts import symbol_rows
from guard.serving.background import BackgroundServer
from guard.serving.settings import ServerSettings
from guard.tools.evaluation.text_attacks import build_attack
from guard.tools.evaluation.text_gateway import GatewayOracle

ATTACKS = ("swap", "insert", "delete", "homoglyph", "word-substitution")
RULES = {
    "decision, 3 changes (default)": {},
    "decision, 1 change": {"min_changes": 1},
    "duplicates, 2 near": {"rule": "duplicates", "min_near": 2},
    "duplicates, 5 near": {"rule": "duplicates", "min_near": 5},
}


@dataclass
class Stream:
    client: str
    kind: str
    texts: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    success: int | None = None
    """Attacks: the query that succeeded (1-based), None where none did within the budget."""


class Recording:
    """An Oracle that asks the gateway and keeps every query and its answer (-1: refused)."""

    def __init__(self, oracle: GatewayOracle):
        self.oracle, self.stream = oracle, Stream("", "")

    def __call__(self, texts: list[str]) -> np.ndarray:
        probabilities = self.oracle(texts)
        self.stream.texts += list(texts)
        self.stream.answers += [-1 if np.isnan(p).any() else int(p.argmax()) for p in probabilities]
        return probabilities


def repository(tmp: Path, built: Path) -> Path:
    from guard_examples.text_guard import SENTIMENT

    directory = tmp / "sentiment"
    directory.mkdir()
    for name in SENTIMENT.files:  # what the examples' text repository serves of the built model
        shutil.copyfile(built / name, directory / name)
    document = SENTIMENT.config("sentiment")
    del document["detectors"]
    document["clients"] = {"query_attack": "flag", "rule": "duplicates", "min_near": 1}
    (directory / "config.toml").write_text(tomlkit.dumps(document))
    return tmp


def neighbours(tmp: Path) -> dict[str, list[str]]:
    """The word substitution's candidates: the table the examples' FGWS detector reads (each whole
    word of the encoder's vocabulary with its nearest whole words in the embedding space)."""
    from guard_examples.text_guard import write_neighbours

    path = tmp / "neighbours.npz"
    write_neighbours(path)
    return load_neighbours(path)


def first_flag(stream: Stream, settings: QuerySettings) -> int | None:
    store = QueryStore(settings)
    for i, (text, answer) in enumerate(zip(stream.texts, stream.answers, strict=True)):
        if store.observe("c", fingerprints(symbol_rows([text]), settings), np.array([answer]), 0.0)[0].flagged:
            return i + 1
    return None


def _caught_first(flag: int | None, success: int | None) -> bool:
    """Flagged at or before the query that succeeded (the flagged query itself is not answered
    under `block`), or flagged at all where the attack never succeeded."""
    return flag is not None and (success is None or flag <= success)


def table(streams: list[Stream]) -> list[str]:
    lines = [
        "| rule | client | flagged | succeeded | succeeded before a flag | queries to first flag: median (min-max) |",
        "|---|---|---|---|---|---|",
    ]
    for name, change in RULES.items():
        settings = dataclasses.replace(QuerySettings(), **change)
        flags = {id(s): first_flag(s, settings) for s in streams}
        for kind in (*ATTACKS, "benign"):
            group = [s for s in streams if s.kind == kind]
            flagged = [flags[id(s)] for s in group if flags[id(s)] is not None]
            succeeded = sum(1 for s in group if s.success is not None)
            won = sum(1 for s in group if s.success is not None and not _caught_first(flags[id(s)], s.success))
            spread = f"{int(np.median(flagged))} ({min(flagged)}-{max(flagged)})" if flagged else "-"
            label = kind if kind != "benign" else "benign: " + ", ".join(f"{s.client} ({len(s.texts)})" for s in group)
            n = len(group)
            lines.append(f"| {name} | {label} | {len(flagged)}/{n} | {succeeded}/{n} | {won}/{n} | {spread} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from guard_examples import sentiment
    from guard_examples.text_data import rotten_tomatoes, vader

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/text-query-attacks"))
    parser.add_argument("--texts", type=int, default=20, help="test reviews each attack runs on")
    parser.add_argument("--budget", type=int, default=200, help="queries an attack may send per review")
    parser.add_argument("--benign", type=int, default=300, help="texts each benign client reads (twice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("guard").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    texts, labels = rotten_tomatoes("test")
    streams: list[Stream] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = ServerSettings(
            repository=repository(Path(tmp), sentiment.ensure_built()), grpc_port=0, metrics_port=0
        )
        with BackgroundServer(settings) as server, GatewayOracle(server.grpc_url, "sentiment") as oracle:
            right = [i for i, p in enumerate(oracle(list(texts[:200])).argmax(1)) if p == labels[i]][: args.texts]
            recording = Recording(oracle)
            nearest = neighbours(Path(tmp))
            for name in tqdm(ATTACKS, desc="text attacks"):
                candidates = (lambda word: nearest.get(word.lower(), [])) if name == "word-substitution" else None
                attack = build_attack(name, {"max_queries": args.budget, "max_edits": 5}, candidates)
                for i in right:
                    recording.stream = Stream(f"{name}{i}", name)
                    (result,) = attack.run(recording, [texts[i]], [int(labels[i])], seed=args.seed + i)
                    recording.stream.success = result.queries if result.success else None
                    streams.append(recording.stream)
            rng = np.random.default_rng(args.seed)
            tweets, _ = vader("tweets")
            for client, source in (("reviews", texts[200 : 200 + args.benign]), ("tweets", tweets[: args.benign])):
                recording.stream = Stream(client, "benign")
                order = np.concatenate([rng.permutation(len(source)), rng.permutation(len(source))])
                for k in range(0, len(order), 32):
                    recording([source[j] for j in order[k : k + 32]])
                streams.append(recording.stream)
    text = [
        "# Query-attack rules on a text model (sentiment, live gateway; offline replay per rule)",
        "",
        f"`python -m benchmarks.text_query_attacks --texts {args.texts} --budget {args.budget} "
        f"--benign {args.benign} --seed {args.seed}`",
        "",
        *table(streams),
        "",
    ]
    summary = [{"client": s.client, "kind": s.kind, "queries": len(s.texts), "success": s.success} for s in streams]
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "streams": summary}
    (args.out / "text-query-attacks.json").write_text(json.dumps(report, indent=1))
    (args.out / "text-query-attacks.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
