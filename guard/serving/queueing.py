"""The requests waiting for a batch (guard.serving.batching): their arrival order, rows and
per-flow counts, and the order batches take them in.

Without flows a batch takes requests in arrival order. When requests name flows (cameras,
guard.serving.cameras), a batch takes each flow's oldest request in turn, then each one's next,
and so on (requests without a flow form one flow of their own), and each takes at most its share
of the batch: max_batch_size over the flows active in the last `active_seconds` (or waiting now),
rounded up. A batch takes longer the more rows it holds, and a frame that arrives while one runs
waits for it: a flooding flow allowed to fill or lengthen batches would delay every other flow's
frames, even in the moments when it is the only one waiting. A flow alone fills batches. One flow
may hold at most `flow_limit` places in the queue.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

ACTIVE_SECONDS = 1.0
"""A flow counts towards the shares for this long after its latest request: longer than the gap
between a camera's frames at any usual rate."""


class Waiter(Protocol):
    rows: int
    flow: str | None
    enqueued: float


W = TypeVar("W", bound=Waiter)
"""What the queue holds: the batcher's pending requests."""


class WaitingQueue(Generic[W]):
    def __init__(self, flow_limit: int = 0, active_seconds: float = ACTIVE_SECONDS):
        """flow_limit: most requests one flow may have queued (0 = no limit of its own).
        active_seconds: a flow that sent a request this recently counts as active."""
        self._items: collections.deque[W] = collections.deque()
        self._flow_limit = flow_limit
        self._flows: collections.Counter[str] = collections.Counter()
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()  # flow -> latest arrival
        self._active_seconds = active_seconds
        self.rows = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[W]:
        return iter(self._items)

    @property
    def head(self) -> W:
        return self._items[0]

    def full(self, max_size: int, flow: str | None) -> str | None:
        """Why one more request (of `flow`) would be refused, or None."""
        if max_size and len(self._items) >= max_size:
            return f"Exceeds maximum queue size ({max_size} requests)"
        if flow is not None and self._flow_limit and self._flows[flow] >= self._flow_limit:
            return f"camera '{flow}' has {self._flow_limit} requests queued already (its share of the queue)"
        return None

    def add(self, item: W) -> None:
        self._items.append(item)
        self.rows += item.rows
        if item.flow is not None:
            self._flows[item.flow] += 1
            self._seen[item.flow] = item.enqueued
            self._seen.move_to_end(item.flow)

    def remove(self, item: W) -> bool:
        try:
            self._items.remove(item)
        except ValueError:
            return False
        self._left(item)
        return True

    def take(self, limit: int, accept: Callable[[W], bool], now: float = 0.0) -> list[W]:
        """Requests for one batch of at most `limit` rows, out of the queue. Each one considered
        leaves the queue; `accept` says whether it still wants to run (its caller may have given
        up), and only those count towards the rows and are returned."""
        batch: list[W] = []
        rows = 0
        if not self._flows:  # arrival order; the first request that does not fit waits for the next batch
            while self._items and rows + self._items[0].rows <= limit:
                item = self._items.popleft()
                self._left(item)
                if accept(item):
                    batch.append(item)
                    rows += item.rows
            return batch
        lanes = self._fair_order()
        share = -(-limit // max(len(lanes), self._active(now)))
        taken: set[int] = set()
        per_lane: collections.Counter[str | None] = collections.Counter()
        for turn in itertools.zip_longest(*lanes.values()):
            for flow, item in zip(lanes, turn):
                if item is None or rows + item.rows > limit:
                    continue
                # A flow's first request is always within its share: one of more rows than the
                # share must not wait forever.
                if per_lane[flow] and per_lane[flow] + item.rows > share:
                    continue
                taken.add(id(item))
                self._left(item)
                if accept(item):
                    batch.append(item)
                    rows += item.rows
                    per_lane[flow] += item.rows
        self._items = collections.deque(item for item in self._items if id(item) not in taken)
        return batch

    def _active(self, now: float) -> int:
        """Flows that sent a request within active_seconds of `now`."""
        while self._seen and next(iter(self._seen.values())) < now - self._active_seconds:
            self._seen.popitem(last=False)
        return len(self._seen)

    def _fair_order(self) -> dict[str | None, list[W]]:
        """Each flow's waiting requests, oldest first (requests without a flow form one flow)."""
        lanes: dict[str | None, list[W]] = {}
        for item in self._items:
            lanes.setdefault(item.flow, []).append(item)
        return lanes

    def clear(self) -> list[W]:
        """Every waiting request, out of the queue."""
        items = list(self._items)
        self._items.clear()
        self._flows.clear()
        self.rows = 0
        return items

    def _left(self, item: W) -> None:
        self.rows -= item.rows
        if item.flow is not None:
            self._flows[item.flow] -= 1
            if not self._flows[item.flow]:
                del self._flows[item.flow]
