"""Sizes every layer agrees on, and how a client's own strings are shown back to it.

Each limit below is checked before the work it bounds: a request that breaks one costs the
gateway a comparison, not an allocation (docs/reliability.md, "Bad input, streams, admission").
"""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest gRPC message the gateway accepts and sends by default (`guard serve
--max-message-bytes`), and the most its upstream client and evaluation client take."""

MAX_RANK = 16
"""Most dimensions a tensor may declare. Far above any vision or text model, far below numpy's
own limit (64), which would otherwise surface as a server error."""

MAX_ELEMENTS = 2**31 - 1
"""Most elements a tensor's shape may describe, counting a zero dimension as one: no message
under gRPC's 2 GiB ceiling carries more, and a shape like [0, 2^62, 2^62] (no data at all) must
not reach numpy, which refuses to even describe it."""

MAX_NAME_CHARS = 255
"""Longest model name or version a request may carry: model names are directory names."""

MAX_PARAMETERS = 256
"""Most request parameters: a v2 request carries a handful (timeout, priority, sequence ids).
Counted on the wire, before the message is parsed (guard.protocol.wire)."""

MAX_PARAMETER_BYTES = 64 * 1024
"""Most bytes a request's parameters may take on the wire, all together: names and values of a
handful of parameters (a camera_id has at most 128 characters) take well under a kilobyte."""

MAX_ECHO_CHARS = 200
"""Most characters of a client's string (a model or tensor name) an error message repeats."""

OFFLOAD_BYTES = 1024 * 1024
"""Tensor contents that need per-element decoding (BYTES, typed contents) beyond this size are
decoded on a worker thread, so one large request does not hold the event loop."""

MAX_CONCURRENCY = 1024
"""Default for `guard serve --max-concurrency`: inference requests in flight at once (unary
calls and stream requests). Above it a request is refused with RESOURCE_EXHAUSTED before its
message is even parsed. 1024 matches a model's default max_queue_size: on a 2-core host that is
about one second of the demo model's work, beyond which waiting serves no one."""

STREAM_IN_FLIGHT = 64
"""Requests one ModelStreamInfer stream may have read but not yet answered (sent). The reader
stops pulling from the client while a stream holds this many, so gRPC flow control pushes back
on the client instead of the gateway buffering its flood. 64 is two full batches of the demo
model (enough to keep batching efficient) and 1/16 of a default queue (1024), so one stream can
never fill the queue every client shares."""

STREAM_HELD_BYTES = MAX_MESSAGE_BYTES
"""Request bytes one stream may hold unanswered (one request more is always allowed)."""


def echo(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """A client's string quoted for an error message or a log line: at most `limit` characters,
    control and quote characters escaped, so a 4 MB name or a newline cannot flood or forge lines."""
    shown = text[:limit]
    if not shown.isprintable() or "'" in shown or "\\" in shown:
        shown = "".join(
            c
            if c.isprintable() and c not in "'\\"
            else "\\'"
            if c == "'"
            else c.encode("unicode_escape").decode("ascii")
            for c in shown
        )
    more = f"... ({len(text)} characters)" if len(text) > limit else ""
    return f"'{shown}'{more}"
