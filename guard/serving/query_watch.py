"""Per-client state: black-box query attacks, watched per model and per client identity.

A model's `[clients]` table (read with the client's quotas, guard.serving.client_settings), or
`guard serve --query-attack` for every model, sets `query_attack`:
- `off`: nothing is kept.
- `flag`: every answer carries `guard_client_verdict`, `query_attack` while the identity is flagged
  (for `block_seconds` after its latest flagged query), else `clean`.
- `block`: while flagged, the identity's requests fail PERMISSION_DENIED ("query attack"), the one
  that got it flagged included: its answer is the one the attack was probing for.

The identity is the transport's (guard.serving.auth), never anything the request says. Flags are
counted in guard_client_flagged_total{model,reason} (no identity label: label values would come
from clients) and logged once per flagged period, with the identity, the model and the matches;
never the input. The fingerprints and the rule live in guard.detection.queries.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import Counter

from guard.detection.queries import MATCHES, RULES, Match, QuerySettings, QueryStore, prints
from guard.protocol.errors import GuardError
from guard.protocol.settings import TableReader
from guard.serving.logs import loggable
from guard.serving.shared_queries import SharedQueryStore, connect

if TYPE_CHECKING:  # model_config reads [clients] through this module
    from guard.serving.model_config import ModelConfig

log = logging.getLogger("guard.serving.query_watch")

MODES = ("off", "flag", "block")
CLIENT_VERDICT = "guard_client_verdict"
QUERY_ATTACK = "query_attack"
CLEAN = "clean"


class QueryAttackBlocked(GuardError):
    """The identity was flagged for a query attack and the model's mode is `block`."""

    status = "PERMISSION_DENIED"


@dataclass(frozen=True)
class QueryAttackSettings:
    query_attack: str = "off"
    """off, flag or block (see the module's docstring)."""
    block_seconds: float = 300.0
    """How long an identity stays flagged after its latest flagged query."""
    queries: QuerySettings = field(default_factory=QuerySettings)
    """Fingerprints, store bounds and the match rule (the other keys of [clients])."""


QUERY_ATTACK_KEYS = {"query_attack", "block_seconds", *(f.name for f in fields(QuerySettings))}
"""The keys of [clients] read here; the table's other keys are the quotas'."""


def read_query_attack_settings(r: TableReader) -> QueryAttackSettings:
    """The query-attack keys of a model's [clients] table (the caller checks for unknown keys)."""
    d, q = QueryAttackSettings(), QuerySettings()
    value_range = r.get("value_range", list, list(q.value_range))
    if (
        len(value_range) != 2
        or not all(isinstance(v, int | float) for v in value_range)
        or value_range[0] >= value_range[1]
    ):
        raise r.fail("value_range", "[low, high] with low < high", value_range)
    queries = QuerySettings(
        levels=r.positive("levels", q.levels),
        value_range=(float(value_range[0]), float(value_range[1])),
        window=r.positive("window", q.window),
        top=r.positive("top", q.top),
        threshold=r.positive("threshold", q.threshold),
        match=r.choice("match", MATCHES, q.match),
        distance=r.positive_float("distance", q.distance) if "distance" in r.table else q.distance,
        dims=r.positive("dims", q.dims),
        rule=r.choice("rule", RULES, q.rule),
        min_near=r.positive("min_near", q.min_near),
        min_changes=r.positive("min_changes", q.min_changes),
        max_entries=r.positive("max_entries", q.max_entries),
        max_identities=r.positive("max_identities", q.max_identities),
        window_seconds=r.positive_float("window_seconds", q.window_seconds),
    )
    if queries.threshold > queries.top:
        raise r.fail("threshold", f"at most top ({queries.top})", queries.threshold)

    return QueryAttackSettings(
        query_attack=r.choice("query_attack", MODES, d.query_attack),
        block_seconds=r.positive_float("block_seconds", d.block_seconds),
        queries=queries,
    )


class QueryWatch:
    """One model's watch in this process: its query store and the identities flagged now (bounded
    like the store)."""

    clock = staticmethod(time.monotonic)

    def __init__(self, model: str, settings: QueryAttackSettings, flagged_counter):
        self.model, self.settings = model, settings
        self.store = QueryStore(settings.queries)
        self._until: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._counter = flagged_counter.labels(model, QUERY_ATTACK)

    async def flagged(self, identity: str) -> bool:
        return self._flagged(identity, self.clock())

    def _flagged(self, identity: str, now: float) -> bool:
        until = self._until.get(identity)
        if until is None:
            return False
        if until <= now:
            del self._until[identity]
            return False
        return True

    async def _matches(
        self, identity: str, prints: np.ndarray, answers: np.ndarray, now: float
    ) -> tuple[list[Match], bool]:
        """The rows' matches (stored as they are matched), and whether the identity is flagged."""
        return self.store.observe(identity, prints, answers, now), self._flagged(identity, now)

    async def _flag(self, identity: str, now: float) -> bool:
        """Flag the identity for block_seconds; whether it was not flagged before."""
        fresh = not self._flagged(identity, now)
        self._until[identity] = now + self.settings.block_seconds
        self._until.move_to_end(identity)
        while len(self._until) > self.settings.queries.max_identities:
            self._until.popitem(last=False)
        return fresh

    async def observe(self, identity: str, inputs: np.ndarray, answers: np.ndarray) -> bool:
        """Store the request's rows; True when the identity is flagged after them."""
        now = self.clock()
        matches, flagged = await self._matches(identity, prints(inputs, self.settings.queries), answers, now)
        hit = next((m for m in matches if m.flagged), None)
        if hit is not None and await self._flag(identity, now):
            self._counter.inc()
            # The audit trail: who, on which model, on what evidence; never the input.
            log.warning(
                "query attack flagged model=%s client=%s near=%d changes=%d block_seconds=%.0f",
                self.model,
                loggable(identity),
                hit.near,
                hit.changes,
                self.settings.block_seconds,
            )
        return hit is not None or flagged


class SharedQueryWatch(QueryWatch):
    """One model's watch on the store every replica shares (guard.serving.shared_queries): the
    matches and the flags are the store's, so a client flagged by one replica is flagged by all."""

    clock = staticmethod(time.time)  # comparable across hosts; monotonic clocks are not

    def __init__(self, model: str, settings: QueryAttackSettings, flagged_counter, shared: SharedQueryStore):
        super().__init__(model, settings, flagged_counter)
        self.shared = shared

    async def flagged(self, identity: str) -> bool:
        return await self.shared.flagged(identity)

    async def _matches(
        self, identity: str, prints: np.ndarray, answers: np.ndarray, now: float
    ) -> tuple[list[Match], bool]:
        return await self.shared.observe(identity, prints, answers, now)  # the flag comes in the same step

    async def _flag(self, identity: str, now: float) -> bool:
        # Counted and logged by each replica that sees a flagged query after it was clear there:
        # freshness is this replica's (bounded as in process), the flag itself the store's.
        fresh = await super()._flag(identity, now)
        await self.shared.flag(identity, self.settings.block_seconds)
        return fresh


def answers_of(outputs: dict[str, np.ndarray], first_output: str, rows: int) -> np.ndarray:
    """The model's answer per row, as the attacker sees it: the top-1 class of its first output."""
    logits = np.asarray(outputs[first_output]).reshape(rows, -1)
    return logits.argmax(axis=1).astype(np.int64)


class QueryWatches:
    """Every model's QueryWatch, made on a model's first request and again when a reload changes
    its settings; `override` is `guard serve --query-attack` (None: each model's own mode);
    `store_url` is `guard serve --query-store` (None: each process keeps its own state)."""

    def __init__(self, flagged_counter=None, override: str | None = None, store_url: str | None = None):
        self._counter = flagged_counter or Counter(
            "guard_client_flagged", "unregistered", ["model", "reason"], registry=None
        )
        self.override = override
        self._client = None if store_url is None else connect(store_url)
        self._watches: dict[str, QueryWatch] = {}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _settings(self, config: ModelConfig) -> QueryAttackSettings:
        settings: QueryAttackSettings = config.clients.queries
        if self.override is not None and self.override != settings.query_attack:
            settings = dataclasses.replace(settings, query_attack=self.override)
        return settings

    def _watch(self, config: ModelConfig) -> QueryWatch | None:
        settings = self._settings(config)
        if settings.query_attack == "off" or (config.preprocess is not None and not config.preprocess.fingerprinted):
            return None  # a preprocessor that offers nothing to fingerprint: nothing is kept or asked
        watch = self._watches.get(config.name)
        if watch is None or watch.settings != settings:
            if self._client is not None and settings.queries.match == "distance":
                raise QueryStoreUnsupported(
                    f"model '{config.name}' matches queries by distance ([clients] match = \"distance\"), which "
                    "the shared query store does not: its queries cannot be checked"
                )
            if self._client is None:
                watch = QueryWatch(config.name, settings, self._counter)
            else:
                shared = SharedQueryStore(self._client, config.name, settings.queries)
                watch = SharedQueryWatch(config.name, settings, self._counter, shared)
            self._watches[config.name] = watch
        return watch

    async def check(self, config: ModelConfig, identity: str) -> None:
        """Before any work: refuse an identity flagged under mode `block`."""
        watch = self._watch(config)
        if watch is not None and watch.settings.query_attack == "block" and await watch.flagged(identity):
            raise _blocked(config.name)

    async def observe(
        self,
        config: ModelConfig,
        identity: str,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        query_rows: np.ndarray | None = None,
    ) -> str | None:
        """After the model answered: the response's guard_client_verdict (None: not watched);
        raises QueryAttackBlocked under `block` when the identity is flagged, and
        QueryStoreUnavailable (UNAVAILABLE) when the shared store cannot be asked: the request's
        queries could not be checked, so it is not answered. `query_rows`: what the model's
        preprocessor offers to fingerprint (an encoded image's thumbnail, a text's characters): the
        bytes a client sent are not what the model compares, so a model with a preprocessor that
        offers none (a plugin's kind without query_rows) is not watched."""
        watch = self._watch(config)
        if watch is None:
            return None
        x = inputs[config.detection.guarded_input] if config.preprocess is None else query_rows
        if x is None:
            return None
        flagged = await watch.observe(identity, x, answers_of(outputs, config.outputs[0].name, len(x)))
        if flagged and watch.settings.query_attack == "block":
            raise _blocked(config.name)
        return QUERY_ATTACK if flagged else CLEAN


class QueryStoreUnsupported(GuardError):
    """The model's query settings need what the shared store (--query-store) does not offer: its
    requests are refused rather than answered unchecked. Not the client's fault, nor an outage."""

    status = "FAILED_PRECONDITION"


def _blocked(model: str) -> QueryAttackBlocked:
    return QueryAttackBlocked(f"query attack: this client is blocked from model '{model}' for a while")
