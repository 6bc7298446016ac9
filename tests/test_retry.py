"""RetryPolicy, its pure schedule, and the retry drivers (with a fake clock).

Every driver test runs against both drivers: ``call_with_retry`` and, through
``run_async``, ``acall_with_retry`` with the same operation, clock and policy.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.utils.functional import fxrange

from wiretask.errors import (
    ConnectionLost,
    EncodeError,
    PublishError,
    TransportError,
    ValidationError,
)
from wiretask.retry import RetryPolicy, acall_with_retry, call_with_retry, is_recoverable

T = TypeVar("T")


def take(policy: RetryPolicy, n: int) -> list[float]:
    return list(itertools.islice(policy.intervals(), n))


def kombu_schedule(start: float, step: float, ceiling: float, n: int) -> list[float]:
    """kombu 5.7's retry_over_time schedule, from kombu's own fxrange."""
    values = fxrange(start, ceiling + start, step, repeatlast=True)  # type: ignore[no-untyped-call]
    return [min(v, float(ceiling)) for v in itertools.islice(values, n)]


class FakeClock:
    """A monotonic clock that only moves when the driver sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


class Flaky:
    """An operation that fails ``failures`` times with ``error`` and then returns 'ok'."""

    def __init__(self, failures: int, error: Callable[[], BaseException]) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return "ok"


def lost() -> ConnectionLost:
    return ConnectionLost("connection refused")


# -- the policy value ---------------------------------------------------------------------


def test_defaults_are_the_documented_celery_policy() -> None:
    policy = RetryPolicy()
    assert (policy.max_retries, policy.interval_start, policy.interval_step,
            policy.interval_max) == (3, 0, 0.2, 0.2)
    assert policy.timeout is None
    assert policy.jitter == 0
    assert policy.max_attempts == 4


def test_celery_default_is_the_code_default() -> None:
    policy = RetryPolicy.celery_default()
    assert policy.as_options() == {
        "max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 1,
    }
    # Celery 5.7's measured behaviour: 4 attempts, sleeps 0 (none), 0.2, 0.4 → 0.6 s.
    assert take(policy, 3) == [0, 0.2, 0.4]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"interval_start": -0.1}, "interval_start"),
        ({"interval_step": float("nan")}, "interval_step"),
        ({"interval_max": float("inf")}, "interval_max"),
        ({"interval_max": "1"}, "interval_max"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -5}, "timeout"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"retry_errors": (ValueError, "x")}, "retry_errors"),
        ({"retry_errors": "ValueError"}, "retry_errors"),
    ],
)
def test_bad_values_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy.from_options(options)
    assert info.value.field == field
    with pytest.raises(ValidationError):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_unknown_key_is_refused_and_named() -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy.from_options({"max_retries": 1, "interval": 2})
    assert info.value.field == "interval"
    assert "max_retries" in str(info.value)  # lists the known keys


@pytest.mark.parametrize("key", ["errback", "on_revive"])
def test_callable_keys_are_refused_with_the_wiretask_way(key: str) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy.from_options({key: print})
    assert info.value.field == key
    assert "call_with_retry" in str(info.value)


def test_from_options_and_merge() -> None:
    policy = RetryPolicy.from_options({"max_retries": 5, "timeout": 2.5, "jitter": 0.1})
    assert policy == RetryPolicy(max_retries=5, timeout=2.5, jitter=0.1)
    merged = policy.merge({"interval_max": 1, "max_retries": None})
    assert merged == RetryPolicy(max_retries=None, interval_max=1, timeout=2.5, jitter=0.1)
    assert policy.max_retries == 5  # frozen: merge made a copy
    assert RetryPolicy.from_options(None) == RetryPolicy()
    assert RetryPolicy.from_options(merged.as_options()) == merged
    with pytest.raises(ValidationError):
        policy.merge({"max_retries": "3"})
    with pytest.raises(ValidationError):
        policy.merge([("max_retries", 3)])  # type: ignore[arg-type]


def test_retry_errors_accepts_a_class_or_a_tuple() -> None:
    assert RetryPolicy(retry_errors=KeyError).retry_errors == (KeyError,)
    policy = RetryPolicy.from_options({"retry_errors": [KeyError, OSError]})
    assert policy.retry_errors == (KeyError, OSError)
    assert policy.as_options()["retry_errors"] == (KeyError, OSError)


# -- the pure schedule --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "step", "ceiling", "expected"),
    [
        (0, 0.2, 1, [0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0, 1.0, 1.0]),
        (0, 0.2, 0.2, [0, 0.2, 0.2, 0.2]),
        (1, 2, 4, [1, 3, 4, 4, 4]),
        (0.5, 0.5, 1, [0.5, 1, 1, 1]),
        (1, 1, 1, [1, 1, 1]),
        (2, 2, 30, [*range(2, 31, 2), 30, 30]),
        (0, 0.3, 1, [0, 0.3, 0.6, 0.8999999999999999, 0.8999999999999999]),
        (0, 0, 0, [0, 0, 0]),
    ],
)
def test_schedule_table(start: float, step: float, ceiling: float, expected: list[float]) -> None:
    policy = RetryPolicy(interval_start=start, interval_step=step, interval_max=ceiling)
    assert take(policy, len(expected)) == expected
    assert take(policy, len(expected)) == kombu_schedule(start, step, ceiling, len(expected))
    for number, value in enumerate(expected, start=1):
        assert policy.delay(number) == value


intervals_st = st.tuples(
    st.floats(0, 10, allow_nan=False),
    st.floats(0, 5, allow_nan=False).filter(lambda s: s == 0 or s > 1e-3),
    st.floats(0, 30, allow_nan=False),
)


@given(intervals_st, st.integers(1, 60))
def test_schedule_matches_kombu(params: tuple[float, float, float], n: int) -> None:
    start, step, ceiling = params
    policy = RetryPolicy(interval_start=start, interval_step=step, interval_max=ceiling)
    ours, theirs = take(policy, n), kombu_schedule(start, step, ceiling, n)
    # Equal except where kombu's repeated ``cur - step`` is rounded one ulp down.
    assert all(
        a == b or math.isclose(a, b, rel_tol=1e-15, abs_tol=1e-15)
        for a, b in zip(ours, theirs, strict=True)
    )


@given(intervals_st, st.integers(1, 80))
def test_schedule_is_non_decreasing_and_bounded(
    params: tuple[float, float, float], n: int
) -> None:
    start, step, ceiling = params
    policy = RetryPolicy(interval_start=start, interval_step=step, interval_max=ceiling)
    values = take(policy, n)
    assert all(0 <= v <= ceiling for v in values)
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert [policy.delay(i) for i in range(1, n + 1)] == values


@given(
    intervals_st,
    st.floats(0, 1, allow_nan=False),
    st.integers(0, 2**32),
    st.integers(1, 40),
)
def test_jitter_bounds_and_determinism(
    params: tuple[float, float, float], jitter: float, seed: int, n: int
) -> None:
    start, step, ceiling = params
    policy = RetryPolicy(
        interval_start=start, interval_step=step, interval_max=ceiling, jitter=jitter
    )
    plain = policy.delay(n)
    jittered = policy.delay(n, random.Random(seed))
    assert plain * (1 - jitter) - 1e-12 <= jittered <= plain * (1 + jitter) + 1e-12
    assert jittered == policy.delay(n, random.Random(seed))  # seeded → reproducible
    assert policy.delay(n) == plain  # no rng → no jitter, pure


def test_jitter_actually_varies_the_sleep() -> None:
    policy = RetryPolicy(interval_start=1, interval_step=0, interval_max=1, jitter=0.5)
    rng = random.Random(7)
    values = {policy.delay(1, rng) for _ in range(20)}
    assert len(values) > 1


@pytest.mark.parametrize("bad", [0, -1, 1.0, True])
def test_delay_rejects_bad_retry_numbers(bad: object) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy().delay(bad)  # type: ignore[arg-type]


def test_delay_of_a_huge_retry_number_is_the_steady_value() -> None:
    assert RetryPolicy().delay(10**9) == 0.2
    assert RetryPolicy(interval_step=0.2, interval_max=1).delay(10**9) == 1.0
    assert RetryPolicy(interval_start=1, interval_step=2, interval_max=4).delay(10**9) == 4


# -- the driver -----------------------------------------------------------------------------


def run_async(
    operation: Callable[[], T],
    policy: RetryPolicy | None,
    *,
    recover: Callable[[], None] | None = None,
    sleep: Callable[[float], None] | None = None,
    **options: Any,
) -> T:
    """``acall_with_retry`` with the sync test doubles made awaitable, in a fresh loop."""

    async def attempt() -> T:
        return operation()

    async def reconnect() -> None:
        assert recover is not None
        recover()

    async def pause(seconds: float) -> None:
        assert sleep is not None
        sleep(seconds)

    return asyncio.run(acall_with_retry(
        attempt, policy, recover=None if recover is None else reconnect,
        sleep=asyncio.sleep if sleep is None else pause, **options,
    ))


DRIVERS = [pytest.param(call_with_retry, id="sync"), pytest.param(run_async, id="async")]
Driver = Callable[..., Any]


@pytest.mark.parametrize("drive", DRIVERS)
@given(st.integers(0, 12), intervals_st)
def test_total_attempts_is_max_retries_plus_one(
    drive: Driver, max_retries: int, params: tuple[float, float, float]
) -> None:
    start, step, ceiling = params
    policy = RetryPolicy(
        max_retries=max_retries, interval_start=start, interval_step=step, interval_max=ceiling
    )
    clock = FakeClock()
    operation = Flaky(10**6, lost)
    with pytest.raises(PublishError) as info:
        drive(operation, policy, sleep=clock.sleep, monotonic=clock.monotonic)
    assert operation.calls == max_retries + 1
    assert info.value.attempts == max_retries + 1
    expected = [v for v in take(policy, max_retries) if v > 0]
    assert clock.sleeps == expected


@pytest.mark.parametrize("drive", DRIVERS)
def test_default_policy_attempts_and_sleeps_exactly(drive: Driver) -> None:
    clock = FakeClock()
    operation = Flaky(10, lost)
    retries: list[tuple[int, float]] = []
    with pytest.raises(PublishError) as info:
        drive(
            operation, RetryPolicy.celery_default(), sleep=clock.sleep,
            monotonic=clock.monotonic, task_id="t-1",
            on_retry=lambda exc, n, delay: retries.append((n, delay)),
        )
    err = info.value
    assert operation.calls == 4
    assert clock.sleeps == [0.2, 0.4]  # a 0 interval means no sleep, as in kombu
    assert retries == [(1, 0.0), (2, 0.2), (3, 0.4)]
    assert err.attempts == 4
    assert err.task_id == "t-1"
    assert isinstance(err.cause, ConnectionLost)
    assert err.__cause__ is err.cause
    assert "4 attempt" in str(err)


@pytest.mark.parametrize("drive", DRIVERS)
def test_success_after_failures_calls_recover_before_each_retry(drive: Driver) -> None:
    events: list[str] = []

    def operation() -> str:
        events.append("publish")
        if events.count("publish") <= 2:
            raise ConnectionLost("down")
        return "sent"

    clock = FakeClock()
    result = drive(
        operation, RetryPolicy(), recover=lambda: events.append("recover"),
        sleep=clock.sleep, monotonic=clock.monotonic,
    )
    assert result == "sent"
    assert events == ["publish", "recover", "publish", "recover", "publish"]
    assert clock.sleeps == [0.2]


@pytest.mark.parametrize("drive", DRIVERS)
def test_retry_false_fails_at_once_with_publish_error(drive: Driver) -> None:
    clock = FakeClock()
    operation = Flaky(1, lost)
    with pytest.raises(PublishError) as info:
        drive(operation, RetryPolicy(), retry=False, sleep=clock.sleep)
    assert operation.calls == 1
    assert info.value.attempts == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        lambda: EncodeError("args", "not serializable"),
        lambda: ValidationError("priority", "too big"),
        lambda: TransportError("wrong password"),
        lambda: KeyError("x"),
    ],
)
@pytest.mark.parametrize("drive", DRIVERS)
def test_non_recoverable_errors_propagate_untouched(
    drive: Driver, error: Callable[[], Exception]
) -> None:
    clock = FakeClock()
    operation = Flaky(1, error)
    with pytest.raises(type(error())) as info:
        drive(operation, RetryPolicy(), sleep=clock.sleep)
    assert not isinstance(info.value, PublishError)
    assert info.value.__cause__ is None
    assert operation.calls == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("drive", DRIVERS)
def test_recover_failing_recoverably_counts_as_an_attempt(drive: Driver) -> None:
    clock = FakeClock()
    reconnects = Flaky(10**6, lost)  # the broker never comes back

    def recover() -> None:
        reconnects()

    operation = Flaky(1, lost)
    with pytest.raises(PublishError) as info:
        drive(
            operation, RetryPolicy(max_retries=3), recover=recover,
            sleep=clock.sleep, monotonic=clock.monotonic,
        )
    assert operation.calls == 1  # every retry died in recover(), before the publish
    assert reconnects.calls == 3
    assert info.value.attempts == 4
    assert clock.sleeps == [0.2, 0.2]


@pytest.mark.parametrize("drive", DRIVERS)
def test_recover_succeeding_later_lets_the_publish_through(drive: Driver) -> None:
    clock = FakeClock()
    reconnects = Flaky(2, lost)  # two failed reconnects, then the broker is back

    def recover() -> None:
        reconnects()

    operation = Flaky(1, lost)
    assert drive(
        operation, RetryPolicy(max_retries=3), recover=recover, sleep=clock.sleep
    ) == "ok"
    assert reconnects.calls == 3
    assert operation.calls == 2


@pytest.mark.parametrize("drive", DRIVERS)
def test_recover_failing_non_recoverably_propagates(drive: Driver) -> None:
    def recover() -> None:
        raise TransportError("authentication failed")

    with pytest.raises(TransportError, match="authentication failed"):
        drive(Flaky(1, lost), RetryPolicy(), recover=recover, sleep=FakeClock().sleep)


@pytest.mark.parametrize("drive", DRIVERS)
def test_retry_errors_are_retried_without_recover(drive: Driver) -> None:
    clock = FakeClock()
    recovered: list[int] = []
    operation = Flaky(2, lambda: KeyError("stale fd"))
    policy = RetryPolicy.from_options({"retry_errors": (KeyError,), "interval_start": 0.1})
    assert drive(
        operation, policy, recover=lambda: recovered.append(1), sleep=clock.sleep
    ) == "ok"
    assert operation.calls == 3
    assert recovered == []
    assert clock.sleeps == [0.1, 0.2]
    assert is_recoverable(KeyError(), policy)
    assert not is_recoverable(KeyError(), RetryPolicy())


@pytest.mark.parametrize("drive", DRIVERS)
def test_forever_stops_on_success(drive: Driver) -> None:
    clock = FakeClock()
    operation = Flaky(50, lost)
    policy = RetryPolicy(max_retries=None)
    assert drive(operation, policy, sleep=clock.sleep) == "ok"
    assert operation.calls == 51
    assert clock.sleeps == [0.2] * 49


@pytest.mark.parametrize("drive", DRIVERS)
def test_timeout_bounds_the_whole_publish_and_never_sleeps_past_it(drive: Driver) -> None:
    clock = FakeClock()
    # Attempts cost time too (a connect that times out): 0.3 s each on the fake clock.
    def operation() -> str:
        clock.now += 0.3
        raise ConnectionLost("connect timed out")

    policy = RetryPolicy(max_retries=None, interval_start=0.5, interval_step=0.5,
                         interval_max=1, timeout=3)
    start = clock.now
    with pytest.raises(PublishError) as info:
        drive(operation, policy, sleep=clock.sleep, monotonic=clock.monotonic)
    # attempt at 0 (ends 0.3), sleep 0.5, attempt at 0.8 (ends 1.1), sleep 1,
    # attempt at 2.1 (ends 2.4); the next sleep (1) would end at 3.4 > 3 → give up now.
    assert info.value.attempts == 3
    assert clock.sleeps == [0.5, 1]
    assert clock.now - start <= 3
    assert "deadline" in str(info.value)


@pytest.mark.parametrize("drive", DRIVERS)
def test_timeout_passed_during_an_attempt_stops_without_sleeping(drive: Driver) -> None:
    clock = FakeClock()

    def operation() -> str:
        clock.now += 5  # one attempt blew the whole budget
        raise ConnectionLost("slow")

    with pytest.raises(PublishError) as info:
        drive(operation, RetryPolicy(timeout=1), sleep=clock.sleep,
                        monotonic=clock.monotonic)
    assert info.value.attempts == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("drive", DRIVERS)
def test_jittered_sleeps_are_reproducible_with_a_seeded_rng(drive: Driver) -> None:
    policy = RetryPolicy(max_retries=5, interval_start=1, interval_step=1, interval_max=3,
                         jitter=0.2)

    def run(seed: int) -> list[float]:
        clock = FakeClock()
        with pytest.raises(PublishError):
            drive(Flaky(99, lost), policy, sleep=clock.sleep, rng=random.Random(seed))
        return clock.sleeps

    first = run(3)
    assert first == run(3)
    assert len(first) == 5
    for value, base in zip(first, [1, 2, 3, 3, 3], strict=True):
        assert base * 0.8 <= value <= base * 1.2
    assert first != [1, 2, 3, 3, 3]


@pytest.mark.parametrize("drive", DRIVERS)
def test_keyboard_interrupt_is_not_swallowed(drive: Driver) -> None:
    def operation() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(operation, RetryPolicy(), sleep=FakeClock().sleep)
