"""The requests on one copy of a model: a reload closes the copy it replaced only once none is
left on it (guard.serving.reload)."""

from __future__ import annotations

import asyncio


class InFlight:
    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        """Set while no request is on this copy."""
        self._idle.set()

    def enter(self) -> None:
        self._count += 1
        self._idle.clear()

    def leave(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._idle.set()

    @property
    def count(self) -> int:
        return self._count

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request is on this copy; False when `timeout` passed first."""
        if self._count == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
