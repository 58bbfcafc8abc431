"""The circuit breaker on a fake clock."""

from guard.backends.remote.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_probes_after_the_reset_interval():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, reset_s=0.25, clock=clock)
    breaker.failure()
    breaker.failure()
    breaker.success()  # a success in between resets the count
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    assert breaker.retry_in() == 0.25
    clock.now = 0.3
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.failure()  # the probe failed: open again at once
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 0.6
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow()


def test_trip_and_close_from_the_health_watcher():
    breaker = CircuitBreaker(failures=3, reset_s=10.0, clock=Clock())
    breaker.trip()
    assert breaker.state == OPEN and not breaker.allow()
    breaker.close()
    assert breaker.state == CLOSED and breaker.allow()


def test_a_new_breaker_is_closed_and_opens_only_at_the_threshold():
    breaker = CircuitBreaker(failures=3, reset_s=10.0, clock=Clock())
    assert breaker.state == CLOSED and breaker.allow() and breaker.retry_in() == 0.0
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED and breaker.allow()  # two of three: still closed
    breaker.failure()
    assert breaker.state == OPEN


def test_an_open_circuit_probes_exactly_at_the_reset_interval():
    clock = Clock()
    breaker = CircuitBreaker(failures=1, reset_s=0.25, clock=clock)
    breaker.failure()
    clock.now = 0.125
    assert breaker.retry_in() == 0.125 and not breaker.allow()
    clock.now = 0.25
    assert breaker.retry_in() == 0.0 and breaker.allow() and breaker.state == HALF_OPEN


def test_retry_in_counts_from_when_the_circuit_opened():
    clock = Clock()
    clock.now = 10.0
    breaker = CircuitBreaker(failures=1, reset_s=0.25, clock=clock)
    breaker.failure()
    clock.now = 10.125
    assert breaker.retry_in() == 0.125
