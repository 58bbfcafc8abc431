"""The requests waiting for a batch (guard.serving.batching): their arrival order, rows and
per-flow counts, and the order batches take them in.

Without flows a batch takes requests in arrival order. When requests name flows (cameras,
guard.serving.cameras), a batch takes each flow's oldest request in turn, then each one's next,
and so on (requests without a flow form one flow of their own), and while several flows wait each
takes at most its share of the batch (max_batch_size over the flows waiting, rounded up): a flow
with a backlog can neither fill a batch nor lengthen it while others wait. One flow may hold at
most `flow_limit` places in the queue.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator
from typing import Protocol


class Waiter(Protocol):
    rows: int
    flow: str | None


class WaitingQueue:
    def __init__(self, flow_limit: int = 0):
        """flow_limit: most requests one flow may have queued (0 = no limit of its own)."""
        self._items: collections.deque = collections.deque()
        self._flow_limit = flow_limit
        self._flows: collections.Counter[str] = collections.Counter()
        self.rows = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator:
        return iter(self._items)

    @property
    def head(self) -> Waiter:
        return self._items[0]

    def full(self, max_size: int, flow: str | None) -> str | None:
        """Why one more request (of `flow`) would be refused, or None."""
        if max_size and len(self._items) >= max_size:
            return f"Exceeds maximum queue size ({max_size} requests)"
        if flow is not None and self._flow_limit and self._flows[flow] >= self._flow_limit:
            return f"camera '{flow}' has {self._flow_limit} requests queued already (its share of the queue)"
        return None

    def add(self, item: Waiter) -> None:
        self._items.append(item)
        self.rows += item.rows
        if item.flow is not None:
            self._flows[item.flow] += 1

    def remove(self, item: Waiter) -> bool:
        try:
            self._items.remove(item)
        except ValueError:
            return False
        self._left(item)
        return True

    def take(self, limit: int, accept: Callable[[Waiter], bool]) -> list:
        """Requests for one batch of at most `limit` rows, out of the queue. Each one considered
        leaves the queue; `accept` says whether it still wants to run (its caller may have given
        up), and only those count towards the rows and are returned."""
        batch, rows = [], 0
        if not self._flows:  # arrival order; the first request that does not fit waits for the next batch
            while self._items and rows + self._items[0].rows <= limit:
                item = self._items.popleft()
                self._left(item)
                if accept(item):
                    batch.append(item)
                    rows += item.rows
            return batch
        # While several flows wait, each takes at most its share of the batch: a batch's duration
        # grows with its rows, so rows a flooding flow adds would delay every other flow's requests
        # in it. Alone, a flow may fill the batch.
        lanes = self._fair_order()
        share = -(-limit // len(lanes))
        taken, per_lane = set(), collections.Counter()
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

    def _fair_order(self) -> dict[str | None, list]:
        """Each flow's waiting requests, oldest first (requests without a flow form one flow)."""
        lanes: dict[str | None, list] = {}
        for item in self._items:
            lanes.setdefault(item.flow, []).append(item)
        return lanes

    def clear(self) -> list:
        """Every waiting request, out of the queue."""
        items = list(self._items)
        self._items.clear()
        self._flows.clear()
        self.rows = 0
        return items

    def _left(self, item: Waiter) -> None:
        self.rows -= item.rows
        if item.flow is not None:
            self._flows[item.flow] -= 1
            if not self._flows[item.flow]:
                del self._flows[item.flow]
