"""A model's [clients] table: what one client (an identity, guard.protocol.types.InferRequest.identity)
may do to the model, read once on load.

Every limit is optional: unset, it falls back to the server-wide default (`guard serve
--client-rate/--client-burst/--client-max-concurrency`), and with neither it is unlimited.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from guard.protocol.settings import TableReader
from guard.serving.query_watch import QUERY_ATTACK_KEYS, QueryAttackSettings, read_query_attack_settings


@dataclass(frozen=True)
class ClientSettings:
    rate: float | None = None
    """Requests per second one identity may send to the model, on average (a token bucket)."""
    burst: int | None = None
    """Requests one identity may send at once above `rate` (the bucket's size); unset: one
    second's worth of `rate`, at least 1."""
    max_concurrency: int | None = None
    """Requests one identity may have inside the model (queued or running) at once."""
    max_identities: int = 10_000
    """Identities whose quota state is kept; beyond it the least recently seen is forgotten (its
    next request starts with a full bucket). Bounds memory whatever the number of peers."""
    max_cameras: int = 65_536
    """camera_id values bound to an identity (guard.serving.camera_owners); when the table is full
    a new camera_id is refused, an existing binding is never evicted."""
    queries: QueryAttackSettings = field(default_factory=QueryAttackSettings)
    """Query-attack detection: `query_attack` and its settings (guard.serving.query_watch)."""

    def merged(self, defaults: ClientSettings) -> ClientSettings:
        """These settings, with each limit left unset taken from `defaults` (the server's flags)."""
        return ClientSettings(
            rate=self.rate if self.rate is not None else defaults.rate,
            burst=self.burst if self.burst is not None else defaults.burst,
            max_concurrency=self.max_concurrency if self.max_concurrency is not None else defaults.max_concurrency,
            max_identities=self.max_identities,
            max_cameras=self.max_cameras,
            queries=self.queries,
        )


CLIENT_KEYS = {"rate", "burst", "max_concurrency", "max_identities", "max_cameras", *QUERY_ATTACK_KEYS}


def read_client_settings(r: TableReader) -> ClientSettings:
    r.unknown(CLIENT_KEYS)
    d = ClientSettings()
    return ClientSettings(
        rate=r.positive_float("rate", ..., "requests per second, a positive number") if "rate" in r.table else None,
        burst=r.positive("burst", ...) if "burst" in r.table else None,
        max_concurrency=r.positive("max_concurrency", ...) if "max_concurrency" in r.table else None,
        max_identities=r.positive("max_identities", d.max_identities),
        max_cameras=r.positive("max_cameras", d.max_cameras),
        queries=read_query_attack_settings(r),
    )
