"""Run a GuardServer on its own event-loop thread: for tests, benchmarks and `guard evaluate`,
which drive the gateway with blocking clients from the calling thread."""

from __future__ import annotations

import asyncio
import threading

from guard.serving.server import GuardServer
from guard.serving.settings import ServerSettings


class BackgroundServer:
    def __init__(self, settings: ServerSettings, startup_timeout: float = 120.0):
        self.server = GuardServer(settings)
        self._timeout = startup_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="guard-server", daemon=True)

    @property
    def grpc_url(self) -> str:
        return f"{self.server.settings.host}:{self.server.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.server.settings.metrics_host}:{self.server.metrics_port}/metrics"

    def call(self, coroutine, timeout: float | None = None):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        try:
            self.call(self.server.start(), self._timeout)
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.call(self.server.stop(grace=0.5), 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()
