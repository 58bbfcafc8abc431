"""The system shared-memory extension's regions (Triton's SystemSharedMemory* RPCs).

A client on the same host registers a POSIX shared-memory object (`/dev/shm/<key>`) under a name,
then names that region in a tensor's parameters instead of sending the tensor's bytes. Registering
opens the object and checks that [offset, offset + byte_size) lies inside it; the region keeps the
file descriptor, never a mapping.

Why read with pread() rather than mmap(): the object belongs to the client, which may shrink it
(ftruncate) at any time, and touching a mapped page past the end of a shrunk file raises SIGBUS,
which kills the whole gateway. pread() returns a short read instead, refused as INVALID_ARGUMENT.
It costs the same one copy a mapping would (the bytes are copied out at decode time either way),
and no page faults on first touch.

Why copy at all: the client may overwrite the region as soon as it has its answer, or sooner if
it pipelines frames, while the request may still sit in a batch; reading in place would need the
region pinned for the batch's life. Once decoded, a request owns its bytes, so unregistering a
region (which closes the descriptor) never affects a request that has already read it.

Every method may run on the event loop or a decoding worker thread (BYTES inputs, see
transport/requests.py): one lock covers the table and each read or write, so a descriptor is never
closed, and its number reused, between a lookup and the pread() that uses it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import weakref
from dataclasses import dataclass

from guard.protocol.codec import SharedMemoryRef
from guard.protocol.errors import GuardError, InvalidInput
from guard.protocol.limits import MAX_MESSAGE_BYTES, MAX_NAME_CHARS, echo

SHM_DIR = "/dev/shm"
"""Where glibc's shm_open() keeps POSIX shared-memory objects on Linux."""

MAX_REGIONS = 128
"""Regions registered at once. Each holds an open file descriptor; a camera gateway needs one or
two per camera. Beyond it, registering is refused with RESOURCE_EXHAUSTED."""


SYSTEM_SHARED_MEMORY = "system_shared_memory"
"""The extension's name in ServerMetadata, as Triton lists it."""


class RegionExists(GuardError):
    status = "ALREADY_EXISTS"


class RegionNotFound(GuardError):
    status = "NOT_FOUND"


class TooManyRegions(GuardError):
    status = "RESOURCE_EXHAUSTED"


class RegionNotPermitted(GuardError):
    status = "PERMISSION_DENIED"


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    writable: bool
    """Whether the gateway could open the object for writing (outputs to the region)."""


class SharedMemoryRegistry:
    def __init__(
        self, max_regions: int = MAX_REGIONS, max_tensor_bytes: int = MAX_MESSAGE_BYTES, directory: str = SHM_DIR
    ):
        self.max_regions = max_regions
        self.max_tensor_bytes = max_tensor_bytes
        """Most bytes one tensor may take from a region: what one gRPC message could have carried,
        so shared memory changes the transport, not the gateway's memory bounds."""
        self.directory = directory
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._regions)  # a server that never calls close()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        _check_name(name)
        path = self._path(key)
        with self._lock:
            if name in self._regions:
                raise RegionExists(f"shared memory region {echo(name)} is already registered")
            if len(self._regions) >= self.max_regions:
                raise TooManyRegions(
                    f"{len(self._regions)} shared memory regions are registered, the gateway's "
                    f"limit: unregister one first"
                )
            if byte_size == 0:
                raise InvalidInput(f"shared memory region {echo(name)}: byte_size must be at least 1")
            fd, writable = _open(path, key)
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise InvalidInput(
                        f"shared memory region {echo(name)}: offset {offset} + byte_size {byte_size} "
                        f"is beyond the end of shared memory object {echo(key)} ({size} bytes)"
                    )
            except BaseException:
                os.close(fd)
                raise
            self._regions[name] = Region(name, key, offset, byte_size, fd, writable)

    def status(self, name: str = "") -> list[Region]:
        """Every region, or the one named (NOT_FOUND if none is)."""
        with self._lock:
            if not name:
                return list(self._regions.values())
            region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"no system shared memory region named {echo(name)} is registered")
        return [region]

    def unregister(self, name: str = "") -> None:
        """Forget a region and close its descriptor; every region when `name` is empty. An unknown
        name is not an error (as in Triton): unregistering is idempotent."""
        with self._lock:
            for each in [name] if name else list(self._regions):
                region = self._regions.pop(each, None)
                if region is not None:
                    os.close(region.fd)

    def close(self) -> None:
        self.unregister()

    def read(self, ref: SharedMemoryRef, tensor: str) -> bytes:
        """An input tensor's bytes, copied out of its region."""
        self._check_size(ref, tensor)
        with self._lock:
            region = self._find(ref, tensor)
            data = os.pread(region.fd, ref.byte_size, region.offset + ref.offset)
        if len(data) != ref.byte_size:
            raise InvalidInput(
                f"input {echo(tensor)}: shared memory object {echo(region.key)} of region "
                f"{echo(ref.region)} now ends before the tensor's bytes (it was truncated)"
            )
        return data

    def check_output(self, ref: SharedMemoryRef, tensor: str) -> None:
        """Before the model runs: the region exists, holds [offset, offset + byte_size) and is writable."""
        self._check_size(ref, tensor)
        with self._lock:
            region = self._find(ref, tensor)
        if not region.writable:
            raise InvalidInput(
                f"output {echo(tensor)}: shared memory region {echo(ref.region)} is read-only to "
                "the gateway (it could not open the object for writing)"
            )

    def write(self, ref: SharedMemoryRef, tensor: str, data: bytes) -> None:
        """An output tensor's bytes, into its region (at its start; the rest is left as it was)."""
        if len(data) > ref.byte_size:
            raise InvalidInput(
                f"output {echo(tensor)}: needs {len(data)} bytes, shared_memory_byte_size gives "
                f"{ref.byte_size} in region {echo(ref.region)}"
            )
        with self._lock:
            region = self._find(ref, tensor)
            written = os.pwrite(region.fd, data, region.offset + ref.offset)
        if written != len(data):
            raise InvalidInput(
                f"output {echo(tensor)}: shared memory object {echo(region.key)} of region "
                f"{echo(ref.region)} took {written} of {len(data)} bytes (it was truncated)"
            )

    def _check_size(self, ref: SharedMemoryRef, tensor: str) -> None:
        if ref.byte_size > self.max_tensor_bytes:
            raise InvalidInput(
                f"tensor {echo(tensor)}: shared_memory_byte_size {ref.byte_size} is more than the "
                f"{self.max_tensor_bytes} bytes one tensor may take from shared memory"
            )

    def _find(self, ref: SharedMemoryRef, tensor: str) -> Region:
        """The region `ref` names, holding [offset, offset + byte_size); the caller holds the lock."""
        region = self._regions.get(ref.region)
        if region is None:
            raise InvalidInput(f"tensor {echo(tensor)}: no shared memory region named {echo(ref.region)} is registered")
        if ref.offset + ref.byte_size > region.byte_size:
            raise InvalidInput(
                f"tensor {echo(tensor)}: shared_memory_offset {ref.offset} + shared_memory_byte_size "
                f"{ref.byte_size} is beyond the end of region {echo(ref.region)} "
                f"({region.byte_size} bytes)"
            )
        return region

    def _path(self, key: str) -> str:
        """/dev/shm/<key> for a POSIX shared-memory name: tritonclient's keys begin with '/', which
        shm_open() drops; any other '/' would leave the directory, so it is refused."""
        bare = key.lstrip("/")
        if not bare or "/" in bare or bare in (".", "..") or "\0" in bare or len(bare) > MAX_NAME_CHARS:
            raise InvalidInput(
                f"shared memory key {echo(key)} is not a POSIX shared memory name: expected "
                "'/name' (or 'name') with no other '/', at most 255 characters"
            )
        return os.path.join(self.directory, bare)


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidInput(
            f"shared memory region name {echo(name)}: expected 1 to {MAX_NAME_CHARS} printable characters"
        )


def _open(path: str, key: str) -> tuple[int, bool]:
    """The object's descriptor, read-write where the gateway may write it (outputs), else read-only.
    O_NOFOLLOW and the regular-file check keep a planted symlink, device or FIFO out (O_NONBLOCK:
    opening a FIFO would otherwise wait for a writer)."""
    flags = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    fd, writable = None, True
    for mode in (os.O_RDWR, os.O_RDONLY):
        try:
            fd = os.open(path, mode | flags)
            break
        except FileNotFoundError:
            raise RegionNotFound(
                f"shared memory object {echo(key)} does not exist (no {echo(path)}): create it before registering it"
            ) from None
        except PermissionError:
            writable = False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidInput(f"shared memory object {echo(key)} is a symbolic link") from None
            raise InvalidInput(f"shared memory object {echo(key)} cannot be opened: {exc.strerror}") from None
    if fd is None:
        raise RegionNotPermitted(f"the gateway may not read shared memory object {echo(key)}")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInput(f"shared memory object {echo(key)} is not a regular shared memory object")
    return fd, writable


def _close_all(regions: dict[str, Region]) -> None:
    for region in regions.values():
        with contextlib.suppress(OSError):
            os.close(region.fd)
    regions.clear()
