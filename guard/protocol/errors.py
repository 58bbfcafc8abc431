"""One error family for the whole gateway; each error carries the status it maps to.

The status names are gRPC's (the transport maps them in one place), but nothing here imports
grpc: the data plane raises these without knowing which transport carries them.
"""

from __future__ import annotations


class GuardError(Exception):
    """Base class: `status` is the canonical status name the client receives."""

    status = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ModelNotFound(GuardError):
    status = "NOT_FOUND"


class ModelUnavailable(GuardError):
    """The model is in the repository but not served (its load failed); a later load may serve it."""

    status = "UNAVAILABLE"


class InvalidInput(GuardError):
    """The request breaks the model's declared contract (names the tensor and the expectation)."""

    status = "INVALID_ARGUMENT"


class QueueFull(GuardError):
    status = "UNAVAILABLE"


class Overloaded(GuardError):
    """The gateway holds as many requests as it may (`guard serve --max-concurrency`): refused
    before any work, so the client may retry here later or elsewhere now."""

    status = "RESOURCE_EXHAUSTED"


class QuotaExceeded(Overloaded):
    """One client (an identity) sent more than its model's per-client quota allows ([clients]
    rate/burst or max_concurrency): refused before any work. `retry_ms`, when known (a rate limit:
    when the client's next request fits), is the retry hint the transport sends; None lets the
    transport estimate one as for any overload."""

    def __init__(self, message: str, retry_ms: int | None = None):
        super().__init__(message)
        self.retry_ms = retry_ms


class DeadlineExceeded(GuardError):
    status = "DEADLINE_EXCEEDED"


class Blocked(GuardError):
    """Policy `enforce` refused a flagged request; it was not forwarded."""

    status = "PERMISSION_DENIED"


class Unauthenticated(GuardError):
    """The call carries no credentials the server accepts (`guard serve --auth-tokens`). The message
    never repeats what the client sent: it may be a real token meant for another server."""

    status = "UNAUTHENTICATED"


class NotGranted(GuardError):
    """The caller is known, but not granted what the request asks for (raw detector scores:
    `guard serve --explain-identities`). A client's fault, so never INTERNAL."""

    status = "PERMISSION_DENIED"


class SettingsError(GuardError):
    """A setting cannot be used (a TLS file that cannot be read, a malformed tokens file, a client's
    token file): one line naming the flag, raised before the server starts or a client connects."""

    status = "FAILED_PRECONDITION"


class BackendError(GuardError):
    """The protected model could not run the batch."""

    status = "UNAVAILABLE"


class DetectorError(GuardError):
    """A detector failed, so the request could not be checked (fail closed)."""

    status = "INTERNAL"


class ConfigError(GuardError):
    """A model repository entry is invalid: names the file, the key and what was expected."""

    status = "FAILED_PRECONDITION"

    def __init__(self, path: object, key: str, expected: str, got: object = None):
        got_text = "" if got is None else f", got {got!r}"
        super().__init__(f"{path}: key '{key}': expected {expected}{got_text}")
        self.path, self.key = path, key
