"""Stateful detection of black-box query attacks: compact fingerprints of each client's queries, a
bounded per-identity store of them, and the rule that tells an attack's query stream from benign
repetition.

Decision-based and score-based black-box attacks (HopSkipJump, Boundary, Square, NES) send hundreds
to thousands of queries that are near-duplicates of one another. Following Blacklight (USENIX
Security 2022), each query is quantized, every window of `window` consecutive quantized values is
hashed, and the `top` largest distinct hashes are its fingerprint: two queries that differ in a few
values or by noise below the quantization step share most of them. Two fingerprints sharing at least
`threshold` hashes are near-duplicates.

Near-duplicates alone also describe a static camera (the same scene all day, sensor noise only).
What sets an attack apart is why it repeats itself: to probe the model's decision. Across a cluster
of near-duplicates its answers flip back and forth (one side of the boundary, then the other),
while a camera's near-duplicates all get the same answer. Rule `decision` flags a query once it has
`min_near` near-duplicates among the identity's stored queries and its answer and theirs, in the
order they came, change at least `min_changes` times; rule `duplicates` (Blacklight's) flags on
`min_near` near-duplicates alone.
docs/query-attacks.md has the measurements behind the choice.

`match = "distance"` compares queries by L2 distance instead of shared hashes
(guard.detection.query_distance): an attacker who knows the quantization can break hashes for
almost no distortion, while to look far from its earlier queries under a distance a query has to be
far from them. The rules are the same for both.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from guard.detection.query_distance import embed, within

RULES = ("decision", "duplicates")
MATCHES = ("hashes", "distance")
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so it has an inverse modulo 2**64


@dataclass(frozen=True)
class QuerySettings:
    levels: int = 5
    """Quantization levels over the value range (Blacklight: a step of 50 on 0-255 pixels, ~5 levels)."""
    value_range: tuple[float, float] = (0.0, 1.0)
    """The range quantized; values outside it fall in the end levels."""
    window: int = 12
    """Consecutive quantized values hashed together (Blacklight: 20 on 28x28 and larger images; 12
    chosen on the digits demo's 16x16 calibration split, docs/query-attacks.md)."""
    top: int = 50
    """Hashes kept per query: its fingerprint (8 bytes each)."""
    threshold: int = 30
    """Shared hashes that make two queries near-duplicates (Blacklight: 25; 30 is above every pair
    of different-class digits of the demo's calibration split, whose highest share 26)."""
    match: str = "hashes"
    """`hashes`: near-duplicates share `threshold` hashes; `distance`: they are at most `distance`
    apart (L2, on the embedding of guard.detection.query_distance)."""
    distance: float = 0.0
    """Match `distance`: the L2 distance that makes two queries near-duplicates; the model's own
    (guard.detection.query_distance.derive on clean data), so it has no default."""
    dims: int = 256
    """Match `distance`: values kept per query (sums of consecutive values, 4 bytes each)."""
    rule: str = "decision"
    """`decision`: near-duplicates whose answers change; `duplicates`: near-duplicates alone."""
    min_near: int = 2
    """Near-duplicates among the identity's stored queries a query needs before it can be flagged."""
    min_changes: int = 3
    """Rule `decision`: answer changes along the near-duplicates and the query, in arrival order
    (chosen on the calibration split and carphone/bigbuckbunny footage, docs/query-attacks.md)."""
    max_entries: int = 1000
    """Queries kept per identity (the oldest dropped first)."""
    max_identities: int = 10_000
    """Identities kept (the least recently seen dropped first)."""
    window_seconds: float = 600.0
    """A stored query older than this no longer counts."""


def fingerprints(x: np.ndarray, settings: QuerySettings) -> np.ndarray:
    """Each row's fingerprint: uint64 [rows, top], sorted, 0 padding where a row has fewer distinct
    window hashes than `top`. x: [rows, ...] numbers."""
    rows = x.reshape(len(x), int(np.prod(x.shape[1:])))
    if np.issubdtype(rows.dtype, np.integer):
        # Symbols (a text's characters, guard.detection.texts.symbol_rows): hashed as they are; a
        # window that reaches into the 0 padding is never hashed, so a text's fingerprint does not
        # depend on the longest text it was batched with.
        q = rows.astype(np.uint64)
        window = settings.window
        if q.shape[1] < window:
            return np.zeros((len(rows), settings.top), dtype=np.uint64)
        hashes = _window_hashes(q, window)
        lengths = (rows != 0).sum(axis=1)
        hashes[np.arange(hashes.shape[1])[None, :] + window > lengths[:, None]] = 0
    else:
        lo, hi = settings.value_range
        scaled = (rows.astype(np.float64) - lo) * (settings.levels / (hi - lo))
        q = np.clip(np.floor(scaled), 0, settings.levels - 1).astype(np.uint64) + np.uint64(1)
        hashes = _window_hashes(q, min(settings.window, q.shape[1]))
    hashes = np.sort(hashes, axis=1)
    # Keep each distinct hash once: repeats (flat background) would otherwise fill the top-k.
    repeats = np.zeros(hashes.shape, dtype=bool)
    repeats[:, 1:] = hashes[:, 1:] == hashes[:, :-1]
    hashes[repeats] = 0
    hashes = np.sort(hashes, axis=1)[:, -settings.top :]
    if hashes.shape[1] < settings.top:
        hashes = np.pad(hashes, ((0, 0), (settings.top - hashes.shape[1], 0)))
    return hashes


def prints(x: np.ndarray, settings: QuerySettings) -> np.ndarray:
    """What the store keeps of each row: its hash fingerprint (match `hashes`, uint64 [rows, top])
    or its embedding (match `distance`, float32 [rows, at most dims])."""
    return embed(x, settings.dims) if settings.match == "distance" else fingerprints(x, settings)


def near(stored: np.ndarray, stored_keys: np.ndarray, print_: np.ndarray, settings: QuerySettings) -> np.ndarray:
    """Which stored prints are near-duplicates of one print, under the settings' match."""
    if settings.match == "distance":
        return within(stored, print_, settings.distance)
    matched: np.ndarray = shared(stored, stored_keys, print_, settings.threshold) >= settings.threshold
    return matched


def _window_hashes(q: np.ndarray, window: int) -> np.ndarray:
    """A polynomial hash of every window of `window` values, mixed: O(values) with prefix sums
    modulo 2**64 (uint64 arithmetic wraps), rather than O(values * window)."""
    n = q.shape[1]
    with np.errstate(over="ignore"):
        inverse = _inverse(_BASE)
        down = np.cumprod(np.full(n, inverse, dtype=np.uint64))  # inverse**(t+1)
        up = np.cumprod(np.full(n, _BASE, dtype=np.uint64))  # base**(t+1)
        prefix = np.zeros((q.shape[0], n + 1), dtype=np.uint64)
        np.cumsum(q * down, axis=1, out=prefix[:, 1:])
        raw = (prefix[:, window:] - prefix[:, : n - window + 1]) * up[: n - window + 1]
        return _mix(raw) | np.uint64(1)  # never 0: 0 pads short fingerprints


def _inverse(a: np.uint64) -> np.uint64:
    """a**-1 modulo 2**64 for odd a (Newton's iteration doubles the correct bits each step)."""
    with np.errstate(over="ignore"):
        x = a
        for _ in range(6):
            x = x * (np.uint64(2) - a * x)
    return x


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: the top-k by value must be a uniform sample of the windows."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        mixed: np.ndarray = h ^ (h >> np.uint64(31))
        return mixed


_KEY_BITS = 16
_KEY_MASK = np.uint64((1 << _KEY_BITS) - 1)


def keys(prints: np.ndarray) -> np.ndarray:
    """The low bits of each hash: a pre-filter's index, so matching gathers from a small table
    instead of searching (uint16, 2 bytes a hash). Embeddings (match `distance`) have none."""
    if prints.dtype != np.uint64:
        return np.zeros((*prints.shape[:-1], 0), dtype=np.uint16)
    return (prints & _KEY_MASK).astype(np.uint16)


def shared(stored: np.ndarray, stored_keys: np.ndarray, fingerprint: np.ndarray, at_least: int) -> np.ndarray:
    """Hashes each stored fingerprint [n, top] shares with one sorted fingerprint [top] (0 pads
    never count). Exact where the count reaches `at_least`; below it, an upper bound (also below).
    A table of the query's key bits finds candidates with one gather; only fingerprints with
    `at_least` candidates are checked hash by hash."""
    table = np.zeros(1 << _KEY_BITS, dtype=bool)
    table[keys(fingerprint[fingerprint != 0])] = True
    counts: np.ndarray = np.take(table, stored_keys).view(np.uint8).sum(axis=1, dtype=np.int64)
    rows = np.flatnonzero(counts >= at_least)
    if len(rows):
        candidates = stored[rows]
        at = np.minimum(np.searchsorted(fingerprint, candidates), len(fingerprint) - 1)
        counts[rows] = ((fingerprint[at] == candidates) & (candidates != 0)).sum(axis=1)
    return counts


def transitions(answers: np.ndarray) -> int:
    """How often consecutive answers differ: A A B A counts 2."""
    return int((answers[1:] != answers[:-1]).sum())


@dataclass(frozen=True)
class Match:
    near: int
    """Near-duplicates of the query among the identity's live stored queries."""
    changes: int
    """Answer changes along those near-duplicates and the query, in the order they came."""
    flagged: bool


_FIRST_CAPACITY = 16


class _History:
    """One identity's latest queries: a ring of fingerprints, their keys, answers, arrival times
    and arrival numbers (rows of one request share a time, never a number). It starts small and
    doubles up to `capacity`: most identities send few queries, and each would otherwise hold a
    full ring."""

    __slots__ = ("prints", "keys", "answers", "times", "order", "next", "size", "count", "capacity")

    def __init__(self, capacity: int, like: np.ndarray):
        """like: prints [rows, ...] of the kind this history keeps (hashes or an embedding)."""
        first = min(capacity, _FIRST_CAPACITY)
        self.prints = np.zeros((first, *like.shape[1:]), dtype=like.dtype)
        self.keys = np.zeros((first, *keys(like).shape[1:]), dtype=np.uint16)
        self.answers = np.zeros(first, dtype=np.int64)
        self.times = np.zeros(first, dtype=np.float64)
        self.order = np.zeros(first, dtype=np.int64)
        self.next = self.size = self.count = 0
        self.capacity = capacity

    def _grow(self) -> None:
        """Room for more, while below capacity: until then the ring never wraps, so rows keep their places."""
        more = min(2 * len(self.prints), self.capacity) - len(self.prints)
        for name in ("prints", "keys", "answers", "times", "order"):
            array = getattr(self, name)
            setattr(self, name, np.concatenate([array, np.zeros((more, *array.shape[1:]), dtype=array.dtype)]))
        self.next = self.size

    def add(self, fingerprint: np.ndarray, answer: int, now: float) -> None:
        if self.size == len(self.prints) < self.capacity:
            self._grow()
        i = self.next
        self.prints[i], self.keys[i], self.answers[i] = fingerprint, keys(fingerprint), answer
        self.times[i], self.order[i] = now, self.count
        self.count += 1
        self.next = (i + 1) % len(self.prints)
        self.size = min(self.size + 1, len(self.prints))

    def newest(self) -> float:
        return float(self.times[(self.next - 1) % len(self.prints)]) if self.size else float("-inf")


class QueryStore:
    """Per identity, its latest queries' fingerprints and answers; bounded in entries per identity,
    in identities (least recently seen dropped) and in time (older than window_seconds ignored)."""

    def __init__(self, settings: QuerySettings):
        self.settings = settings
        self._histories: collections.OrderedDict[str, _History] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._histories)

    def entries(self, identity: str) -> int:
        history = self._histories.get(identity)
        return 0 if history is None else history.size

    def bytes_per_entry(self, values: int | None = None) -> int:
        """Memory per stored query: its hashes (8 bytes each) and their keys (2), or its embedding
        (4 bytes a value, at most `dims`, fewer for inputs of fewer `values`); then answer, time, number."""
        if self.settings.match == "distance":
            dims = self.settings.dims if values is None else len(embed(np.zeros((1, values)), self.settings.dims)[0])
            return dims * 4 + 3 * 8
        return self.settings.top * (8 + 2) + 3 * 8

    def observe(self, identity: str, prints: np.ndarray, answers: np.ndarray, now: float) -> list[Match]:
        """Match each row against the identity's live queries (and the rows before it), then store it."""
        s = self.settings
        history = self._histories.get(identity)
        if history is None or history.newest() < now - s.window_seconds or history.prints.shape[1:] != prints.shape[1:]:
            # A fresh one: nothing of the expired one counts. A print of another size never meets
            # one that matched before (models whose queries change size match by hashes: clients.match).
            history = _History(s.max_entries, prints)
        self._histories[identity] = history
        self._histories.move_to_end(identity)
        while len(self._histories) > s.max_identities:
            self._histories.popitem(last=False)
        matches = []
        for fingerprint, answer in zip(prints, answers.tolist(), strict=True):
            n = history.size
            found = near(history.prints[:n], history.keys[:n], fingerprint, s)
            found &= history.times[:n] >= now - s.window_seconds
            # The cluster's answers in the order they came: a probe flips them back and forth.
            ordered = history.answers[:n][found][np.argsort(history.order[:n][found])]
            matches.append(decide(ordered, answer, s))
            history.add(fingerprint, answer, now)
        return matches


def decide(cluster: np.ndarray, answer: int, settings: QuerySettings) -> Match:
    """The rule, on a query's near-duplicates' answers (in the order they came) and its own answer;
    every store (this module's, the shared one in guard.serving.shared_queries) ends here."""
    count = len(cluster)
    flagged = count >= settings.min_near
    changes = 0
    if settings.rule == "decision":
        changes = transitions(np.append(cluster, answer))
        flagged = flagged and changes >= settings.min_changes
    return Match(count, changes, flagged)
