"""Which identity owns each camera_id, per model: the first identity to use a camera_id owns it.

A camera's state (its alert window, its baseline, its share of the queue) follows its camera_id,
and the id is the client's own string. Without owners, any client could send frames as another
client's camera: poison its baseline, hold its alert down, or use up its queue share. So a
request naming a camera_id that another identity owns fails PERMISSION_DENIED, naming the
camera and never the owner (an identity is a token name or certificate subject).

The table is bounded (`[clients] max_cameras`). When it is full, a new camera_id is refused
(RESOURCE_EXHAUSTED) and every binding stays: evicting the least recently used owner instead
would let a client that fills the table with fresh ids take over someone else's camera next,
which is the very thing the binding prevents. Cameras already bound keep being served; the
bindings last for the life of the process (reloads keep them).
"""

from __future__ import annotations

from guard.protocol.errors import GuardError, NotGranted
from guard.protocol.limits import echo


class CamerasFull(GuardError):
    """The model's camera table is full: a new camera_id is refused (retrying does not help until
    the server restarts with a larger [clients] max_cameras)."""

    status = "RESOURCE_EXHAUSTED"


class CameraOwners:
    def __init__(self) -> None:
        self._owners: dict[str, dict[str, str]] = {}
        """model -> camera_id -> owning identity."""

    def bound(self, model: str) -> int:
        return len(self._owners.get(model, ()))

    def claim(self, model: str, camera: str, identity: str, max_cameras: int) -> None:
        """Bind `camera` to `identity` on first use; raise unless `identity` owns it."""
        owners = self._owners.setdefault(model, {})
        owner = owners.get(camera)
        if owner is None:
            if len(owners) >= max_cameras:
                raise CamerasFull(
                    f"model '{model}' has {len(owners)} camera_ids bound to clients, its limit ([clients] "
                    f"max_cameras {max_cameras}): camera_id {echo(camera)} is new and is refused"
                )
            owners[camera] = identity
        elif owner != identity:
            raise NotGranted(f"camera_id {echo(camera)} of model '{model}' belongs to another client")
