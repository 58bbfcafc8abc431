"""An adaptive black-box attacker against the stateful query-attack check, through the live gateway.

    python -m benchmarks.adaptive_queries --out reports/adaptive-queries [--images 5] [--budget 10000]
        [--match hashes|distance] [--rule decision|duplicates]

The attacker knows the defence (Kerckhoffs): the fingerprint, the rule and the settings the
demo serves are in this repository (guard.detection.queries, docs/query-attacks.md). Where OARS
(CCS 2023) learns from the defence's rejections which queries pass, this attacker needs no
rejection at all: it keeps its own replica of the gateway's store and checks each query against it
before sending, so it never spends a query, or its identity, on a probe of the defence. That is
the stronger attacker: OARS's rejection sampling with the oracle in hand.

Each query ART's attack asks for is sent transformed, resampled until the replica says it has
fewer than `min_near` near-duplicates among what the client sent before (then no rule of
guard.detection.queries can flag it, whatever the answers):

- `none`: as asked (the baseline, the non-adaptive attack of benchmarks.query_attacks);
- `noise`: Gaussian noise of a scale that adapts as OARS's does: grown by half on each local
  rejection, shrunk by a tenth on each acceptance, never below its start;
- `edges`: white-box on the quantization grid: the `k` pixels closest to a quantization edge are
  pushed just across it (each flip changes every hashed window that holds the pixel), `k` grown
  on rejection and shrunk on acceptance as above. It costs far less distortion than noise.
- `spread`: a random direction, and along it the least step (found by bisection on the replica)
  that passes: noise without the adaptation's overshoot;
- `away`: the least step (bisection again) straight away from the query's near-duplicates'
  centroid: each unit moved adds a unit of distance from them, where a random direction in 256
  dimensions adds far less.

With `--match distance` the demo is served with `[clients] match = "distance"` and the distance
`guard calibrate --model` derives from its calibration split, and the replica matches by that
distance as the gateway does; `edges` then has no edge to cross, `spread` and `away` are the
attacker's best moves.

Noise and flips push a query out of the attack's ball: Square's queries are clipped back into it
(L-infinity 0.3), and every attack's success is judged on what was sent, the transformed query:
its top-1 not the digit's class and within the budget (L2 2.0 for HopSkipJump and Boundary, the
ball for Square). A run ends at its first success, at its identity's first flag (the gateway's
`guard_client_verdict`; under `block` that query and every later one would be refused), or when the
query budget is spent. The attack's success rate is the share of digits it succeeded on before
the flag, within the budget. The target: at most 10% within 10,000 queries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from tqdm import tqdm

from benchmarks.query_attacks import gateway, split
from benchmarks.query_clients import L2_BUDGET, LINF_BUDGET, GatewayModel
from guard.detection.queries import MATCHES, RULES, QuerySettings, keys, near, prints
from guard.serving.model_config import load_model_config

SERVED = {"query_attack": "flag"}
"""The demo's [clients] table with detection on and every setting at its default: what ships."""
ATTACKS = ("hopskipjump", "square", "boundary")
EVASIONS = ("none", "noise", "edges", "spread", "away")
NOISE_START = 0.01
"""The noise's first scale (a pixel's standard deviation, pixels in [0, 1])."""
EDGES_START = 4
"""Pixels flipped across a quantization edge at first."""
GROW, SHRINK = 1.5, 0.9
"""The adaptation: on a local rejection the strength grows by half; on an acceptance it shrinks."""
MAX_TRIES = 200
"""Resamples of one query before it is sent as it stands (`tries` in the results: the mean per query)."""
BISECTIONS = 12
"""Halvings of the step `spread` and `away` search (the step is then within 1/4096 of the least)."""
MAX_STEP = 8.0
"""The longest step (L2) `spread` and `away` try; past it the query is sent at this step."""


class Stop(Exception):
    """Ends a run: success, the first flag, or the budget."""


class Replica:
    """The attacker's copy of its own entry in the gateway's store: what it sent, fingerprinted
    with the served settings (the last `max_entries`, as the gateway keeps). The stored prints and
    their keys change only when a query is sent, not per candidate checked; the candidate that
    passes is fingerprinted once, for the check and for the store."""

    def __init__(self, settings: QuerySettings, like: np.ndarray):
        self.settings = settings
        self._stored = prints(like[:0], settings)
        self._keys = keys(self._stored)
        self._last: tuple[bytes, np.ndarray] | None = None

    def _print(self, query: np.ndarray) -> np.ndarray:
        data = query.tobytes()
        if self._last is None or self._last[0] != data:
            self._last = (data, prints(query[None], self.settings)[0])
        return self._last[1]

    def near(self, query: np.ndarray) -> int:
        if not len(self._stored):
            return 0
        return int(near(self._stored, self._keys, self._print(query), self.settings).sum())

    def centroid(self, query: np.ndarray) -> np.ndarray | None:
        """The mean of the query's stored near-duplicates (the embedding, for match `distance`)."""
        if not len(self._stored):
            return None
        found = near(self._stored, self._keys, self._print(query), self.settings)
        return self._stored[found].astype(np.float64).mean(axis=0) if found.any() else None

    def sent(self, query: np.ndarray) -> None:
        self._stored = np.concatenate([self._stored, self._print(query)[None]])[-self.settings.max_entries :]
        self._keys = keys(self._stored)


class Evasion:
    """Transforms each query until the replica passes it; the strength adapts across queries."""

    def __init__(self, kind: str, settings: QuerySettings, seed: int):
        self.kind, self.settings = kind, settings
        self.rng = np.random.default_rng(seed)
        self.strength = NOISE_START if kind == "noise" else float(EDGES_START)
        self.tries: list[int] = []

    def transform(self, row: np.ndarray) -> np.ndarray:
        if self.kind == "noise":
            return np.clip(row + self.rng.normal(0.0, self.strength, row.shape), 0.0, 1.0).astype(np.float32)
        # edges: the cheapest flips first, drawn at random among twice as many candidates so that
        # successive queries do not flip the same pixels.
        flat = row.reshape(-1).astype(np.float64)
        step = 1.0 / self.settings.levels
        level = np.clip(np.floor(flat / step), 0, self.settings.levels - 1)  # as the fingerprint quantizes
        down = np.where(level > 0, flat - level * step, np.inf)  # to just below this level's lower edge
        up = np.where(level < self.settings.levels - 1, (level + 1) * step - flat, np.inf)  # to the next level
        cost = np.minimum(up, down)
        k = min(int(round(self.strength)), int(np.isfinite(cost).sum()))
        pool = np.argsort(cost)[: 2 * k]
        chosen = self.rng.choice(pool, size=k, replace=False) if k else pool[:0]
        out = flat.copy()
        out[chosen] += np.where(up[chosen] < down[chosen], up[chosen] + 1e-4, -(down[chosen] + 1e-4))
        return np.clip(out, 0.0, 1.0).reshape(row.shape).astype(np.float32)

    def passed(self, replica: Replica, row: np.ndarray, project) -> np.ndarray:
        """The query to send for `row`: the first candidate the replica passes."""
        if self.kind == "none":
            return row
        if self.kind in ("spread", "away"):
            return self.least_step(replica, row, project)
        for tries in range(1, MAX_TRIES + 1):
            candidate = project(self.transform(row))
            if replica.near(candidate) < replica.settings.min_near:
                self.tries.append(tries)
                self.strength = max(self.strength * SHRINK, NOISE_START if self.kind == "noise" else EDGES_START)
                return candidate
            # Capped: every pixel for `edges`, a pixel's whole range for `noise` (more changes nothing).
            self.strength = min(self.strength * GROW, float(row.size) if self.kind == "edges" else 1.0)
        self.tries.append(MAX_TRIES)
        return candidate

    def direction(self, replica: Replica, row: np.ndarray) -> np.ndarray:
        """A unit direction in the query's space: at random (`spread`), or away from its stored
        near-duplicates (`away`; at random where it has none, or sits on their centroid)."""
        u = self.rng.normal(size=row.shape)
        if self.kind == "away":
            centre = replica.centroid(row)
            if centre is not None and replica.settings.match == "distance" and centre.size == row.size:
                away = row.reshape(-1) - centre
                if np.linalg.norm(away) > 1e-9:
                    u = away.reshape(row.shape)
        return u / np.linalg.norm(u)

    def least_step(self, replica: Replica, row: np.ndarray, project) -> np.ndarray:
        """The smallest step along one direction that the replica passes (bisection)."""
        u = self.direction(replica, row)

        def at(step: float) -> np.ndarray:
            return project(np.clip(row + step * u, 0.0, 1.0).astype(np.float32))

        def passes(step: float) -> bool:
            return replica.near(at(step)) < replica.settings.min_near

        self.tries.append(1)
        if passes(0.0):
            return row
        low, high = 0.0, MAX_STEP
        if not passes(high):
            return at(high)
        for _ in range(BISECTIONS):
            middle = (low + high) / 2
            low, high = (low, middle) if passes(middle) else (middle, high)
        return at(high)


@dataclass
class Outcome:
    attack: str
    evasion: str
    image: int
    """The digit's row in the demo's test split."""
    digit: int
    queries: int = 0
    first_flag: int | None = None
    first_success: int | None = None
    added_l2: list[float] = field(default_factory=list, repr=False)
    """Per query, how far the evasion moved it from what the attack asked (L2)."""
    tries: float = 0.0
    seconds: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.first_success is not None and (self.first_flag is None or self.first_success < self.first_flag)

    def summary(self) -> dict[str, object]:
        s = {k: v for k, v in asdict(self).items() if k != "added_l2"}
        s["median_added_l2"] = float(np.median(self.added_l2)) if self.added_l2 else 0.0
        s["succeeded"] = self.succeeded
        return s


def run_one(
    url: str,
    token: str,
    attack: str,
    evasion: str,
    image: int,
    x0: np.ndarray,
    label: int,
    budget: int,
    seed: int,
    settings: QuerySettings,
):
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    from benchmarks.query_clients import make_attack

    outcome = Outcome(attack, evasion, image, label)
    model = GatewayModel(triton.InferenceServerClient(url), token)
    replica, evade = Replica(settings, x0[None]), Evasion(evasion, settings, seed)

    def project(q: np.ndarray) -> np.ndarray:
        # Square keeps every query inside its ball; the L2 attacks are judged on the sent query.
        return np.clip(q, x0 - LINF_BUDGET, x0 + LINF_BUDGET) if attack == "square" else q

    def predict(x: np.ndarray) -> np.ndarray:
        out = []
        for row in np.asarray(x, dtype=np.float32):
            if outcome.queries >= budget:
                raise Stop
            sent = evade.passed(replica, row, project)
            logits, flagged, _ = model.ask(sent)
            replica.sent(sent)
            outcome.queries += 1
            outcome.added_l2.append(float(np.linalg.norm(sent - row)))
            delta = sent - x0
            within = (
                np.abs(delta).max() <= LINF_BUDGET + 1e-6 if attack == "square" else np.linalg.norm(delta) <= L2_BUDGET
            )
            if flagged:
                outcome.first_flag = outcome.queries
                raise Stop
            if int(logits.argmax()) != label and within:
                outcome.first_success = outcome.queries
                raise Stop
            e = np.exp(logits - logits.max())
            out.append(e / e.sum())
        return np.stack(out)

    started = time.perf_counter()
    classifier = BlackBoxClassifierNeuralNetwork(predict, (1, 16, 16), 10, clip_values=(0.0, 1.0))
    with contextlib.suppress(Stop):
        make_attack(attack, classifier).generate(x0[None])
    outcome.seconds = time.perf_counter() - started
    outcome.tries = float(np.mean(evade.tries)) if evade.tries else 1.0
    return outcome


def table(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| attack | evasion | succeeded before a flag | flagged | queries to success: median | "
        "queries to flag: median | added L2 per query: median | resamples per query: mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for attack in ATTACKS:
        for evasion in EVASIONS:
            group = [o for o in outcomes if o.attack == attack and o.evasion == evasion]
            if not group:
                continue
            won = [o.first_success for o in group if o.succeeded]
            flags = [o.first_flag for o in group if o.first_flag is not None]
            added = [float(np.median(o.added_l2)) for o in group if o.added_l2]
            lines.append(
                f"| {attack} | {evasion} | {len(won)}/{len(group)} | {len(flags)}/{len(group)} | "
                f"{int(np.median(won)) if won else '-'} | {int(np.median(flags)) if flags else '-'} | "
                f"{np.median(added):.3f} | {np.mean([o.tries for o in group]):.1f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/adaptive-queries"))
    parser.add_argument("--images", type=int, default=5, help="test digits each attack and evasion runs on")
    parser.add_argument("--budget", type=int, default=10_000, help="queries a run may send")
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--evasions", nargs="+", choices=EVASIONS, default=list(EVASIONS))
    parser.add_argument("--seed", type=int, default=0, help="numpy's global seed (ART draws from it) and the evasion's")
    parser.add_argument("--match", choices=MATCHES, default="hashes", help="how the served check matches queries")
    parser.add_argument("--rule", choices=RULES, default="decision", help="the served rule")
    args = parser.parse_args(argv)
    logging.getLogger("guard").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    x, y = split("test")
    runs = [(a, e, k) for a in args.attacks for e in args.evasions for k in range(args.images)]
    tokens = {f"{a}-{e}-{k}": f"{a}{e}{k}-{secrets.token_urlsafe(16)}" for a, e, k in runs}
    tokens["probe"] = f"probe-{secrets.token_urlsafe(16)}"
    outcomes: list[Outcome] = []
    served = {**SERVED, "match": args.match, "rule": args.rule}
    with tempfile.TemporaryDirectory() as tmp, gateway(Path(tmp), served, list(tokens.values())) as server:
        settings = load_model_config(Path(tmp) / "repository" / "digits").clients.queries.queries
        probe = GatewayModel(triton.InferenceServerClient(server.grpc_url), tokens["probe"])
        # The first test digits the model gets right, in order (as benchmarks.query_attacks).
        images = [i for i in range(len(x)) if int(probe.ask(x[i])[0].argmax()) == y[i]][: args.images]
        for a, e, k in tqdm(runs, desc="adaptive attacks"):
            np.random.seed(args.seed + k)  # noqa: NPY002 - ART's attacks draw from the global generator
            i = images[k]
            outcomes.append(
                run_one(
                    server.grpc_url,
                    tokens[f"{a}-{e}-{k}"],
                    *(a, e, i, x[i], int(y[i]), args.budget, args.seed + k),
                    settings,
                )
            )
    text = [
        "# Adaptive attacks on the query-attack check (live gateway, digits demo, shipped settings)",
        "",
        f"`python -m benchmarks.adaptive_queries --images {args.images} --budget {args.budget} --seed {args.seed} "
        f"--match {args.match} --rule {args.rule}`"
        + (f" (served distance {settings.distance:.3f})" if settings.match == "distance" else ""),
        "",
        *table(outcomes),
        "",
    ]
    (args.out / "adaptive-queries.json").write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "runs": [o.summary() for o in outcomes]}, indent=1
        )
    )
    (args.out / "adaptive-queries.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
