"""A request's deadline, and whether a cancelled request ran out of time. All times are
time.monotonic()."""

from __future__ import annotations

import time
from dataclasses import dataclass

from guard.protocol.errors import InvalidInput
from guard.protocol.limits import echo
from guard.protocol.types import InferRequest

# gRPC cancels a handler when the client's deadline passes, and our copy of that deadline is
# computed from `time_remaining()` a moment after gRPC's own: a cancellation this close to it is
# the deadline's, not the client's.
DEADLINE_SLACK = 0.01


@dataclass(frozen=True, slots=True)
class QueueDeadline:
    at: float | None
    """When the request stops waiting (time.monotonic); None: never."""
    what: str = "deadline"
    """What passes then, as the DEADLINE_EXCEEDED message names it: the client's deadline, or the
    server's queue timeout, which a client that set a longer deadline must not take for its own."""


def effective_deadline(
    request: InferRequest, default_microseconds: int, start: float, model: str = ""
) -> QueueDeadline:
    """The earliest of the client's deadline, its `timeout` parameter (us) and the model default
    (0: none); a request may only lower the model's default."""
    candidates = [request.deadline] if request.deadline is not None else []
    timeout = request.parameters.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
            raise InvalidInput(
                f"parameter 'timeout': expected microseconds as a non-negative integer, got {echo(repr(timeout))}"
            )
        if timeout:
            candidates.append(start + timeout / 1e6)
    client = min(candidates) if candidates else None
    if default_microseconds:
        server = start + default_microseconds / 1e6
        if client is None or server < client:
            return QueueDeadline(
                server,
                f"the server's queue timeout of {default_microseconds / 1e6:g} s for model '{model}' "
                "([batching] default_timeout_microseconds, not the client's deadline)",
            )
    return QueueDeadline(client)


def cancelled_status(deadline: float | None) -> str:
    """The status of a request cancelled under it: the client gave up, or its deadline passed."""
    expired = deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK
    return "DEADLINE_EXCEEDED" if expired else "CANCELLED"
