"""Maps the gateway's errors to gRPC status codes, in one place for every unary RPC.

A decorator on each servicer method rather than a server interceptor: grpc.aio runs an
interceptor as an extra coroutine and builds a new method handler for every call, which costs
more than a small model's whole forward pass.
"""

from __future__ import annotations

import functools
import logging

import grpc

from guard.protocol.errors import GuardError

log = logging.getLogger("guard.serving.transport")


def status_code(error: GuardError) -> grpc.StatusCode:
    return grpc.StatusCode[error.status]


def reports_errors(method):
    """Turn GuardError into its status and anything else into INTERNAL, never a traceback."""

    @functools.wraps(method)
    async def guarded(self, request, context):
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except GuardError as exc:
            await context.abort(status_code(exc), exc.message)
        except Exception as exc:  # noqa: BLE001 - never leak a raw traceback to clients
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")

    return guarded
