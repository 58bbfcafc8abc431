"""Maps the gateway's errors to gRPC status codes, in one place for every unary RPC.

A decorator on each servicer method rather than a server interceptor: grpc.aio runs an
interceptor as an extra coroutine and builds a new method handler for every call, which costs
more than a small model's whole forward pass.

Refusals for load (UNAVAILABLE: the model's queue is full; RESOURCE_EXHAUSTED: the gateway's
concurrency limit, or a client's own quota) carry a retry hint, both as the gRPC retry pushback in
the trailing metadata and in the message, so no client is left to guess. Every failure is counted
in the servicer's FaultLog (one log line per interval), never logged per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc

from guard.protocol.errors import GuardError, Overloaded, QueueFull, QuotaExceeded
from guard.protocol.limits import echo

log = logging.getLogger("guard.serving.transport")

RETRY_PUSHBACK = "grpc-retry-pushback-ms"
"""Trailing metadata key gRPC clients read as "retry after this many milliseconds" (gRFC A6)."""


def status_code(error: GuardError) -> grpc.StatusCode:
    return grpc.StatusCode[error.status]


def retry_hint(error: GuardError, admission) -> int | None:
    """Milliseconds to wait before retrying, for refusals caused by load; None otherwise."""
    if isinstance(error, QuotaExceeded) and error.retry_ms is not None:
        return error.retry_ms  # the client's own bucket says when its next request fits
    if isinstance(error, (QueueFull, Overloaded)):
        return admission.retry_after_ms()
    return None


def with_hint(message: str, retry_ms: int | None) -> str:
    return message if retry_ms is None else f"{message}; retry in {retry_ms} ms"


def reports_errors(method):
    """Turn GuardError into its status (with a retry hint for load) and anything else into INTERNAL,
    never a traceback. The servicer provides `admission` (retry hints) and `faults` (counts)."""
    rpc = method.__name__

    @functools.wraps(method)
    async def guarded(self, request, context):
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except GuardError as exc:
            retry_ms = retry_hint(exc, self.admission)
            message = with_hint(exc.message, retry_ms)
            self.faults.failed(rpc, exc.status, message)
            metadata = () if retry_ms is None else ((RETRY_PUSHBACK, str(retry_ms)),)
            await answer(context, status_code(exc), message, metadata)
        except Exception as exc:  # noqa: BLE001 - never leak a raw traceback to clients
            self.faults.server_fault(rpc, exc)
            await answer(context, grpc.StatusCode.INTERNAL, f"internal error: {echo(str(exc))}")

    return guarded


async def answer(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, metadata=()) -> None:
    """End the call with an error status. When gRPC's core has ended the call already (the client's
    deadline passed while the request waited, or the client went away), nothing can be sent: the
    client has its status (DEADLINE_EXCEEDED, from its own deadline), and the request was counted.
    gRPC would log the failed send as an ERROR with a traceback, a server fault, for what is the
    client's deadline; the handler ends as a cancelled one instead (gRPC logs that at DEBUG)."""
    try:
        await context.abort(code, message, metadata)
    except grpc.aio.AbortError:
        raise
    except Exception as exc:  # noqa: BLE001 - grpc's ExecuteBatchError: the call is over
        log.debug("no status sent (the call had ended): %s: %s", code.name, exc)
        raise asyncio.CancelledError from None
