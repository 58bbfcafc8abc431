"""How the quarantine of flagged inputs is configured (`guard serve --quarantine DIR`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class QuarantineSettings:
    directory: Path
    """Where the store lives (created if missing): one SQLite database, quarantine.sqlite3."""
    max_bytes: int = DEFAULT_MAX_BYTES
    """The most the stored records may take (inputs and metadata); past it the oldest records are
    deleted in the transaction that adds new ones. 1 GiB holds ~50,000 camera JPEGs of 20 KB."""
    buffer_records: int = 4096
    """Records waiting for the writer thread at most; one more is dropped (and counted) rather than
    wait: the response path never blocks on the disk."""
    buffer_bytes: int = 256 << 20
    """Bytes of inputs waiting for the writer at most (the same drop past it): bounds the memory a
    burst of large flagged frames may hold."""
    batch_records: int = 512
    """Most records committed in one transaction (one fsync)."""

    def __post_init__(self) -> None:
        for name in ("max_bytes", "buffer_records", "buffer_bytes", "batch_records"):
            if getattr(self, name) <= 0:
                raise ValueError(f"quarantine {name}: expected a positive integer, got {getattr(self, name)}")
