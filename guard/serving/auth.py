"""Who a call comes from: the client identity every request carries (InferRequest.identity).

- With bearer tokens (`--auth-tokens`), the token's name; a call without a token the table holds is
  refused (UNAUTHENTICATED), whatever certificate it came with.
- Else with mutual TLS (`--tls-client-ca`), the subject of the client certificate the handshake
  verified, as gRPC reports it (RFC 4514, e.g. `O=Acme,CN=camera-7`).
- Else the peer's address without its port: one client opens many connections (and reconnects
  from new ports), and per-client state must not split across them.

The identity comes only from what the transport verified, never from the request (a parameter,
its id): per-client quotas, query-attack records and explain grants rest on it. This module knows
no transport; guard.serving.transport.callers reads the values out of a gRPC call.
"""

from __future__ import annotations

from dataclasses import dataclass

from guard.protocol.errors import Unauthenticated
from guard.serving.tokens import TokenFile, TokenTable

SCHEME = "bearer"
"""The authorization scheme, compared without regard to case (RFC 9110, section 11.1)."""


@dataclass(frozen=True)
class Authenticator:
    tokens: TokenTable | TokenFile | None = None
    mutual_tls: bool = False
    """The TLS handshake requires a client certificate signed by --tls-client-ca."""

    @property
    def required(self) -> bool:
        """Whether calls must prove who they come from (otherwise the identity is the peer's address)."""
        return self.tokens is not None or self.mutual_tls

    def identify(self, authorization: list[str], subject: str | None, peer: str) -> str:
        """The caller's identity from the call's `authorization` metadata values, its verified
        certificate subject (None without one) and its peer address; raises Unauthenticated."""
        if self.tokens is not None:
            name = self.tokens.match(_bearer(authorization))
            if name is None:
                raise Unauthenticated("the bearer token is not one this server accepts")
            return name
        if self.mutual_tls:
            if not subject:  # the handshake requires a certificate: only a transport bug lands here
                raise Unauthenticated("no verified client certificate on this connection")
            return subject
        return peer_address(peer)


def _bearer(values: list[str]) -> str:
    if not values:
        raise Unauthenticated("no credentials: send the metadata 'authorization: Bearer <token>'")
    if len(values) > 1:
        raise Unauthenticated("more than one 'authorization' metadata entry: send exactly one")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != SCHEME or not token.strip():
        raise Unauthenticated("the 'authorization' metadata must read 'Bearer <token>'")
    return token.strip()


def peer_address(peer: str) -> str:
    """gRPC's peer string without its port: `ipv4:10.0.0.7:51234` -> `10.0.0.7`, `ipv6:[::1]:5` ->
    `::1` (also percent-encoded, `ipv6:%5B::1%5D:5`); anything else (`unix:/path`) as it is."""
    scheme, _, rest = peer.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return peer or "unknown"
    rest = rest.replace("%5B", "[").replace("%5D", "]")
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit():
        host = rest
    return host.removeprefix("[").removesuffix("]")
