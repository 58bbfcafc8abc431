"""Sizes every layer agrees on."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest gRPC message the gateway accepts and sends by default (`guard serve
--max-message-bytes`), and the most its upstream client and evaluation client take."""
