"""Circuit breakers: open on consecutive failures or an error rate, half-open probe, close, 429."""

from __future__ import annotations

from gateway.providers.balancer import BreakerConfig
from gateway.routing import Breakers

T0 = 500.0


def test_consecutive_failures_open_then_a_probe_closes() -> None:
    breakers = Breakers(BreakerConfig(consecutive_failures=3, cooldown_s=5.0))
    for _ in range(2):
        breakers.failure("pool", now=T0)
    assert breakers.state("pool", now=T0) == "closed" and breakers.allow("pool", now=T0)
    breakers.success("pool", now=T0)  # a success resets the run of failures
    for _ in range(3):
        breakers.failure("pool", now=T0)
    assert breakers.state("pool", now=T0) == "open"
    assert not breakers.allow("pool", now=T0 + 4.9)
    assert breakers.retry_after_s("pool", now=T0 + 1.0) == 4.0
    # Cooldown over: half-open, exactly one probe at a time.
    assert breakers.state("pool", now=T0 + 5.0) == "half_open"
    assert breakers.allow("pool", now=T0 + 5.0)
    assert not breakers.allow("pool", now=T0 + 5.1)
    breakers.success("pool", now=T0 + 5.2)
    assert breakers.state("pool", now=T0 + 5.2) == "closed"
    assert breakers.allow("pool", now=T0 + 5.2) and breakers.allow("pool", now=T0 + 5.2)


def test_a_failed_probe_reopens_for_twice_as_long() -> None:
    breakers = Breakers(BreakerConfig(consecutive_failures=1, cooldown_s=5.0, max_cooldown_s=15))
    breakers.failure("pool", now=T0)
    assert breakers.allow("pool", now=T0 + 5.0)
    breakers.failure("pool", now=T0 + 5.5)
    assert breakers.state("pool", now=T0 + 15.4) == "open"
    assert breakers.allow("pool", now=T0 + 15.5)  # 10 s after the failed probe
    breakers.failure("pool", now=T0 + 16.0)
    assert not breakers.allow("pool", now=T0 + 30.9)  # capped at 15 s
    assert breakers.allow("pool", now=T0 + 31.0)
    breakers.success("pool", now=T0 + 31.0)
    breakers.failure("pool", now=T0 + 40.0)
    assert breakers.allow("pool", now=T0 + 45.0)  # closing reset the cooldown to 5 s


def test_an_error_rate_over_the_window_opens_it() -> None:
    config = BreakerConfig(consecutive_failures=100, error_rate=0.5, min_requests=20, window_s=10)
    breakers = Breakers(config)
    now = T0
    for index in range(19):  # alternating: never two failures in a row
        now += 0.1
        if index % 2:
            breakers.failure("pool", now=now)
        else:
            breakers.success("pool", now=now)
    assert breakers.state("pool", now=now) == "closed"  # 19 outcomes: below min_requests
    breakers.failure("pool", now=now + 0.1)
    assert breakers.state("pool", now=now + 0.1) == "open"


def test_old_errors_leave_the_window() -> None:
    config = BreakerConfig(consecutive_failures=100, min_requests=10, window_s=10)
    breakers = Breakers(config)
    for _ in range(8):
        breakers.failure("pool", now=T0)
    breakers.success("pool", now=T0)
    # 25 s later the old failures are out of the window: a few more do not trip it.
    for _ in range(3):
        breakers.failure("pool", now=T0 + 25)
    assert breakers.state("pool", now=T0 + 25) == "closed"


def test_a_429_cools_down_for_its_retry_after() -> None:
    breakers = Breakers(BreakerConfig(consecutive_failures=5, cooldown_s=5.0))
    breakers.failure("api", now=T0, retry_after_s=7.0)  # one 429 is enough
    assert breakers.state("api", now=T0) == "open"
    assert breakers.retry_after_s("api", now=T0) == 7.0
    assert not breakers.allow("api", now=T0 + 6.9)
    assert breakers.allow("api", now=T0 + 7.0)
    breakers.success("api", now=T0 + 7.5)
    assert breakers.state("api", now=T0 + 7.5) == "closed"
    breakers.failure("api", now=T0 + 8, retry_after_s=1e9)  # absurd values are capped at 1 h
    assert breakers.retry_after_s("api", now=T0 + 8) == 3600.0


def test_a_lost_probe_does_not_wedge_the_breaker() -> None:
    breakers = Breakers(BreakerConfig(consecutive_failures=1, cooldown_s=5.0))
    breakers.failure("pool", now=T0)
    assert breakers.allow("pool", now=T0 + 5.0)  # the probe's outcome never comes back
    assert not breakers.allow("pool", now=T0 + 9.9)
    assert breakers.allow("pool", now=T0 + 10.0)


def test_replicas_and_deployments_have_their_own_breakers() -> None:
    breakers = Breakers(BreakerConfig(consecutive_failures=1))
    breakers.failure("pool", "10.0.0.5:8000", now=T0)
    assert breakers.state("pool", "10.0.0.5:8000", now=T0) == "open"
    assert breakers.state("pool", "10.0.0.6:8000", now=T0) == "closed"
    assert breakers.state("pool", now=T0) == "closed"
    snapshot = breakers.snapshot("pool", "10.0.0.5:8000", now=T0)
    assert snapshot["state"] == "open" and snapshot["consecutive_failures"] == 1
    assert breakers.snapshot("never-failed", now=T0)["state"] == "closed"
