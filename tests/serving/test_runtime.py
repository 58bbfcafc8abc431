"""ModelRuntime's own rules, apart from the pieces it wires (composition, execution, judging,
fail-open, forwarding): when a model counts as ready, and where a batch may run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from types import SimpleNamespace

import pytest

from guard.protocol.errors import DeadlineExceeded
from guard.serving.metrics import GuardMetrics
from guard.serving.model_config import BatchingConfig, load_model_config
from guard.serving.runtime import ModelRuntime, _batching
from tests.conftest import DEMO_REPOSITORY


def test_a_model_is_ready_from_start_until_close():
    config = load_model_config(DEMO_REPOSITORY / "digits_fp32")
    runtime = ModelRuntime(config, GuardMetrics().for_model(config.name))

    async def lifetime() -> list[bool]:
        seen = [runtime.ready]
        await runtime.start()
        seen.append(runtime.ready)
        await runtime.close(timeout=10)
        return [*seen, runtime.ready]

    # Not before start (health checks must not route to it), not after close (a drained model).
    assert asyncio.run(lifetime()) == [False, True, False]


def test_a_backend_that_waits_on_the_network_never_runs_on_the_event_loop():
    batching = BatchingConfig(inline_below_microseconds=500)

    def parts(backend_waits: bool, upstream_waits: bool | None) -> SimpleNamespace:
        upstream = None if upstream_waits is None else SimpleNamespace(waits_on_network=upstream_waits)
        return SimpleNamespace(backend=SimpleNamespace(waits_on_network=backend_waits), upstream=upstream)

    assert _batching(batching, parts(False, None)).inline_below_microseconds == 500  # fast local work: inline
    assert _batching(batching, parts(True, None)).inline_below_microseconds == 0  # a remote backend
    assert _batching(batching, parts(False, True)).inline_below_microseconds == 0  # a remote upstream
    assert _batching(batching, parts(False, False)).inline_below_microseconds == 500


def test_a_batch_runs_outside_the_batcher_without_camera_ids(held_out):
    """Benchmarks and tests call execute() directly, with no cameras: every row is judged alone."""
    config = load_model_config(DEMO_REPOSITORY / "digits")
    runtime = ModelRuntime(config, GuardMetrics().for_model(config.name))
    results = runtime.execute([{"input": held_out[0][i : i + 1]} for i in range(3)])
    assert len(results) == 3 and all(r.verdict.verdict in ("clean", "adversarial") for r in results)


def test_a_batch_still_running_at_close_is_left_to_finish_and_said_so(caplog, held_out):
    """close(timeout) does not wait past its timeout for a batch stuck on a worker: it returns, and
    says so on the serving logger with the model's name. The batch ran on the model's own named
    worker thread, which is what a thread dump or a profile shows of a stuck model."""
    config = load_model_config(DEMO_REPOSITORY / "digits_fp32")
    runtime = ModelRuntime(config, GuardMetrics().for_model(config.name))
    gate, threads = threading.Event(), []
    run = runtime._execution.run

    def held(requests, deadline=None, cameras=None):
        threads.append(threading.current_thread().name)
        gate.wait(10)
        return run(requests, deadline, cameras)

    runtime._execution.run = held

    async def scenario() -> float:
        await runtime.start()
        request = asyncio.ensure_future(runtime.infer({"input": held_out[0][:1]}, 1, None))
        while not threads:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await runtime.close(timeout=0.2)
        took = time.monotonic() - started
        gate.set()
        with contextlib.suppress(Exception):  # answered late or failed UNAVAILABLE: not this test's concern
            await asyncio.wait_for(request, 10)
        return took

    with caplog.at_level(logging.WARNING, logger="guard.serving"):
        took = asyncio.run(scenario())
    assert took < 5  # the held batch would keep it 10 s
    assert threads[0].startswith(f"guard-{config.name}_")
    said = [r.getMessage() for r in caplog.records if r.name == "guard.serving" and "closed" in r.getMessage()]
    assert said == [f"{config.name}: a batch was still running when the model closed; not waiting for it"]


def test_a_closed_model_leaves_no_worker_thread_behind(held_out):
    """Every reload closes a copy: its worker threads must be gone when close returns, or a server
    reloaded for days would gather them."""
    config = load_model_config(DEMO_REPOSITORY / "digits_fp32")
    runtime = ModelRuntime(config, GuardMetrics().for_model(config.name))

    def workers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith(f"guard-{config.name}_")]

    async def lifetime() -> tuple[list[str], list[str]]:
        await runtime.start()
        await asyncio.gather(*(runtime.infer({"input": held_out[0][i : i + 1]}, 1, None) for i in range(4)))
        running = workers()
        await runtime.close(timeout=10)
        return running, workers()

    running, left = asyncio.run(lifetime())
    assert running and left == []


def test_a_deadline_that_passed_before_queueing_is_named_the_deadline(held_out):
    """Without a name for it (the data plane names the client's or the server's), the message says
    "deadline"."""
    config = load_model_config(DEMO_REPOSITORY / "digits_fp32")
    runtime = ModelRuntime(config, GuardMetrics().for_model(config.name))

    async def late() -> None:
        await runtime.start()
        try:
            await runtime.infer({"input": held_out[0][:1]}, 1, time.monotonic() - 1.0)
        finally:
            await runtime.close(timeout=10)

    with pytest.raises(DeadlineExceeded, match="^deadline passed before the request was queued$"):
        asyncio.run(late())
