"""Who may ask for raw detector scores (the request parameter guard_explain).

Raw scores next to the verdict's score/threshold ratio give away each detector's threshold, and
with it how far an input can be pushed before it is flagged: an evaluation and debugging aid, not
something every client should get. So:

- Without authentication (no --auth-tokens, no --tls-client-ca) everyone may, as before: a local
  or trusted deployment where identities are bare peer addresses anyway.
- With authentication, only the identities `guard serve --explain-identities` names (token names
  or certificate subjects); none by default. `*` grants every authenticated identity.

A request that asks without a grant fails with PERMISSION_DENIED before any work is done.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from guard.protocol.errors import NotGranted
from guard.protocol.limits import echo

EVERYONE = "*"


@dataclass(frozen=True)
class ExplainGrants:
    identities: frozenset[str] | None = None
    """Who may; None: everyone."""

    @classmethod
    def resolve(cls, configured: Iterable[str] | None, authenticated: bool) -> ExplainGrants:
        """The grants for `--explain-identities` (None when not given) on a server that does or does
        not authenticate its callers."""
        if configured is None:
            return cls(None if not authenticated else frozenset())
        names = frozenset(name.strip() for name in configured if name.strip())
        return cls(None if EVERYONE in names else names)

    def allows(self, identity: str) -> bool:
        return self.identities is None or identity in self.identities

    def check(self, identity: str, parameter: str) -> None:
        if not self.allows(identity):
            raise NotGranted(
                f"{parameter}: raw detector scores are not granted to {echo(identity)} "
                "(the server's --explain-identities names who may ask)"
            )
