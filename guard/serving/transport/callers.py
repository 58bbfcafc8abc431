"""Reads who is calling out of a gRPC call, for guard.serving.auth to decide.

Called by the servicer itself rather than by a server interceptor, for the reason status.py gives
(grpc.aio builds a new handler per call around an interceptor). Only what the configured
authentication needs is read: with tokens, the `authorization` metadata; with mutual TLS, the
certificate subject from the call's auth context; the peer address otherwise.
"""

from __future__ import annotations

import grpc

from guard.serving.auth import Authenticator

AUTHORIZATION = "authorization"
SUBJECT = "x509_subject"
"""The auth-context property gRPC fills with the verified client certificate's subject (RFC 4514)."""


class Callers:
    def __init__(self, authenticator: Authenticator):
        self.authenticator = authenticator

    @property
    def required(self) -> bool:
        return self.authenticator.required

    def identify(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's identity; raises guard.protocol.errors.Unauthenticated."""
        auth = self.authenticator
        authorization: list[str] = []
        subject = None
        if auth.tokens is not None:
            authorization = [
                value if isinstance(value, str) else value.decode("latin-1")
                for key, value in (context.invocation_metadata() or ())
                if key == AUTHORIZATION  # gRPC lower-cases metadata keys
            ]
        elif auth.mutual_tls:
            first = next(iter(context.auth_context().get(SUBJECT, ())), None)
            subject = first.decode("utf-8", "replace") if first is not None else None
        return auth.identify(authorization, subject, context.peer())
