"""Per-client quotas: how fast and how much at once one identity may ask of a model ([clients]
rate, burst, max_concurrency; guard.serving.client_settings).

Each identity has a token bucket (`burst` requests, refilled at `rate` a second) and a count of
its requests inside the model. Both are decided at admission, before the request is decoded:
a client over its quota costs the gateway a dictionary lookup, and it is refused with
RESOURCE_EXHAUSTED and a retry hint (the rate limit's is exact: when its bucket holds the next
token). Every other client keeps its own quota, so one flooding client cannot starve them.

Memory is bounded: at most `max_identities` identities are kept, the least recently seen
forgotten first (it comes back with a full bucket: forgetting errs towards serving). An identity
with requests inside is never forgotten, so its concurrency count stays right; those are at most
the gateway's own concurrency limit. Runs on the event loop thread: no lock.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from guard.protocol.errors import QuotaExceeded
from guard.protocol.limits import echo
from guard.serving.client_settings import ClientSettings


@dataclass(slots=True)
class Lease:
    """One identity's quota state; a request admitted holds it until `release()`."""

    tokens: float
    stamp: float
    """When `tokens` was last brought up to date (the quota's clock)."""
    inside: int = 0
    """Requests of this identity admitted and not yet released."""

    def release(self) -> None:
        self.inside -= 1


class ClientQuotas:
    """One model's quotas, per identity."""

    def __init__(self, model: str, settings: ClientSettings, clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.settings = settings
        self.rate = settings.rate
        self.burst = settings.burst if settings.burst is not None else max(1, math.ceil(settings.rate or 1))
        self.max_concurrency = settings.max_concurrency
        self._clock = clock
        self._clients: collections.OrderedDict[str, Lease] = collections.OrderedDict()

    @property
    def limited(self) -> bool:
        return self.rate is not None or self.max_concurrency is not None

    def __len__(self) -> int:
        return len(self._clients)

    def admit(self, identity: str) -> Lease:
        """Take one request's place for `identity`, or raise QuotaExceeded; the caller releases
        the lease it gets exactly once."""
        now = self._clock()
        lease = self._clients.get(identity)
        if lease is None:
            lease = self._clients[identity] = Lease(float(self.burst), now)
            self._forget_beyond_cap()
        else:
            self._clients.move_to_end(identity)
        if self.max_concurrency is not None and lease.inside >= self.max_concurrency:
            raise QuotaExceeded(
                f"client {echo(identity)} has {lease.inside} requests in model '{self.model}', its limit "
                f"([clients] max_concurrency {self.max_concurrency})"
            )
        if self.rate is not None:
            lease.tokens = min(float(self.burst), lease.tokens + (now - lease.stamp) * self.rate)
            lease.stamp = now
            if lease.tokens < 1.0:
                wait_ms = max(1, math.ceil((1.0 - lease.tokens) / self.rate * 1000))
                raise QuotaExceeded(
                    f"client {echo(identity)} exceeds its rate limit for model '{self.model}' "
                    f"([clients] rate {self.rate:g} requests/s, burst {self.burst})",
                    retry_ms=wait_ms,
                )
            lease.tokens -= 1.0
        lease.inside += 1
        return lease

    def _forget_beyond_cap(self) -> None:
        """Forget the least recently seen identities with nothing inside, down to the cap."""
        excess = len(self._clients) - self.settings.max_identities
        if excess <= 0:
            return
        idle = []
        for identity, lease in self._clients.items():  # oldest first; skips at most those with requests inside
            if not lease.inside:
                idle.append(identity)
                if len(idle) == excess:
                    break
        for identity in idle:
            del self._clients[identity]


class QuotaBook:
    """Every model's quotas, kept across reloads while a model's limits stay the same (a reload
    must not hand every client a fresh bucket)."""

    def __init__(self, defaults: ClientSettings | None = None, clock: Callable[[], float] = time.monotonic):
        self.defaults = defaults or ClientSettings()
        """The server's defaults (guard serve --client-rate, ...), for limits a model leaves unset."""
        self._clock = clock
        self._models: dict[str, ClientQuotas] = {}

    def of(self, model: str, settings: ClientSettings) -> ClientQuotas:
        """The quotas of `model` under its [clients] settings (merged with the server's defaults)."""
        merged = settings.merged(self.defaults)
        quotas = self._models.get(model)
        if quotas is None or quotas.settings != merged:
            quotas = self._models[model] = ClientQuotas(model, merged, self._clock)
        return quotas

    def admit(self, model: str, settings: ClientSettings, identity: str) -> Lease | None:
        """A lease for one request of `identity` to `model`; None when the model has no quota."""
        quotas = self.of(model, settings)
        return quotas.admit(identity) if quotas.limited else None
