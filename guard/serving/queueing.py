"""The requests waiting for a batch (guard.serving.batching): their arrival order, rows and
per-flow counts, and the order batches take them in.

Without flows a batch takes requests in arrival order. When requests name flows (cameras,
guard.serving.cameras), a batch takes each flow's oldest request in turn, then each one's next,
and so on (requests without a flow form one flow of their own): a flow with a backlog cannot fill
a batch while others wait, and one flow may hold at most `flow_limit` places.
"""

from __future__ import annotations

import collections
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
        taken = set()
        for item in self._fair_order():
            if rows + item.rows <= limit:
                taken.add(id(item))
                self._left(item)
                if accept(item):
                    batch.append(item)
                    rows += item.rows
        self._items = collections.deque(item for item in self._items if id(item) not in taken)
        return batch

    def _fair_order(self) -> list:
        lanes: dict[str | None, list] = {}
        for item in self._items:
            lanes.setdefault(item.flow, []).append(item)
        return [lane[i] for i in range(max(map(len, lanes.values()))) for lane in lanes.values() if i < len(lane)]

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
