"""ModelRuntime's own rules, apart from the pieces it wires (composition, execution, judging,
fail-open, forwarding): when a model counts as ready, and where a batch may run."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

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
