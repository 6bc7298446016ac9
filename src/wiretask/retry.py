"""The publish retry policy: a value, its pure schedule, and the driver that sleeps.

``RetryPolicy`` is Celery's ``retry_policy`` dict made into a frozen, validated value,
plus two things Celery lacks:

* ``timeout``: one overall deadline for the whole publish, connection set-up included.
  Celery's policy counts attempts only, and its connection path can ignore the policy
  altogether (kombu#1024), so ``apply_async(retry=False)`` can hang for seconds on a dead
  broker. Here every attempt, reconnects included, runs inside the same budget.
* ``jitter``: a ± fraction applied to each sleep with an injected ``random.Random``, so a
  fleet of clients that lost the broker together does not reconnect in lockstep.

The schedule (``intervals``/``delay``) is kombu 5.7's: ``fxrange(start, start + max, step,
repeatlast=True)`` with every value clamped to ``interval_max``, computed with the same
float accumulation, so the sleeps are bit-for-bit the ones Celery would sleep.

The drivers are separate and take ``sleep``/``monotonic``/``rng`` as arguments, so tests
drive them with a fake clock and count attempts exactly: ``call_with_retry`` for the sync
calling API, ``acall_with_retry`` for the asyncio one (it sleeps with ``asyncio.sleep`` and
holds ``timeout`` with ``asyncio.timeout``, cutting short an attempt that runs past it).
Both leave every decision (recoverable or not, another try or ``PublishError``, how long to
sleep) to ``Attempts``, so the two cannot differ in what they retry.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import attrs

from wiretask.errors import PublishError, TransportError, ValidationError

__all__ = ["Attempts", "RetryPolicy", "acall_with_retry", "call_with_retry", "is_recoverable"]

T = TypeVar("T")

#: Keys ``RetryPolicy.from_options`` accepts: Celery's four, then wiretask's own.
POLICY_KEYS = (
    "max_retries",
    "interval_start",
    "interval_step",
    "interval_max",
    "timeout",
    "jitter",
    "retry_errors",
)

# Celery/kombu keys that are callables in Celery's world. A policy is a value (it is
# merged, compared, stored in settings), so callables do not belong in it; each has a
# keyword on ``call_with_retry`` that does the same job.
_REJECTED_KEYS = {
    "errback": "errback is not a policy key in wiretask; pass on_retry=(exc, retry_number, "
    "delay) to call_with_retry, which is called before every sleep like kombu's errback",
    "on_revive": "on_revive is not a policy key in wiretask; pass recover=() to "
    "call_with_retry, which is called to reconnect before every retry",
}


def _finite_number(name: str, value: Any, *, minimum: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(name, f"must be a number, got {value!r}", value=value)
    if not math.isfinite(value) or value < minimum:
        raise ValidationError(
            name, f"must be a finite number >= {minimum:g}, got {value!r}", value=value
        )


def _check_number(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _finite_number(attribute.name, value)


def _check_max_retries(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(
            attribute.name, f"must be None (retry forever) or an int >= 0, got {value!r}",
            value=value,
        )


def _check_timeout(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    _finite_number(attribute.name, value)
    if value == 0:
        raise ValidationError(
            attribute.name, "must be None (no deadline) or a number > 0, got 0", value=value
        )


def _check_jitter(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _finite_number(attribute.name, value)
    if value > 1:
        raise ValidationError(
            attribute.name, f"is a fraction and must be within 0..1, got {value!r}", value=value
        )


def _to_error_tuple(value: Any) -> tuple[type[BaseException], ...]:
    if value is None:
        return ()
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple | list | frozenset | set):
        raise ValidationError(
            "retry_errors", f"must be a tuple of exception classes, got {value!r}", value=value
        )
    for item in value:
        if not (isinstance(item, type) and issubclass(item, Exception)):
            raise ValidationError(
                "retry_errors", f"must contain Exception subclasses, got {item!r}", value=value
            )
    return tuple(value)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a publish is retried when the broker is in trouble.

    The first four fields are Celery's ``task_publish_retry_policy`` keys with the same
    meaning. The defaults are the *documented* Celery policy (``interval_max=0.2``,
    0.4 s of total sleep); ``celery_default()`` gives Celery 5.7's code default.

    Attributes:
        max_retries: retries after the first attempt (``None``: retry forever; then set a
            ``timeout``). Total attempts are ``max_retries + 1``.
        interval_start: seconds to sleep before the first retry.
        interval_step: seconds added to the sleep for each further retry.
        interval_max: the sleep never exceeds this (before jitter).
        timeout: an overall deadline in seconds for the whole publish, reconnects
            included. The driver never sleeps past it and makes no attempt after it.
        jitter: a fraction; each sleep is multiplied by a uniform factor in
            ``[1 - jitter, 1 + jitter]``.
        retry_errors: extra exception classes treated as recoverable (Celery's
            ``retry_errors``). They are retried on the same schedule but without
            calling ``recover()``: like kombu, wiretask assumes the connection is fine.
    """

    max_retries: int | None = attrs.field(default=3, validator=_check_max_retries)
    interval_start: float = attrs.field(default=0, validator=_check_number)
    interval_step: float = attrs.field(default=0.2, validator=_check_number)
    interval_max: float = attrs.field(default=0.2, validator=_check_number)
    timeout: float | None = attrs.field(default=None, validator=_check_timeout)
    jitter: float = attrs.field(default=0, validator=_check_jitter)
    retry_errors: tuple[type[BaseException], ...] = attrs.field(
        default=(), converter=_to_error_tuple
    )

    # -- construction ---------------------------------------------------------------

    @classmethod
    def celery_default(cls) -> RetryPolicy:
        """Celery 5.7's code default ``{3, 0, 0.2, 1}``: 4 attempts, 0.6 s of sleep.

        (Celery's docs say ``interval_max`` is 0.2; its code says 1.)
        """
        return cls(max_retries=3, interval_start=0, interval_step=0.2, interval_max=1)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None) -> RetryPolicy:
        """Build a policy from a Celery-style dict, over wiretask's defaults.

        Unknown keys are refused whether or not retrying is on (Celery notices them only
        when ``retry=True``, at publish time, as a ``TypeError`` from kombu).

        Raises:
            ValidationError: an unknown key (``field`` names it) or a bad value.
        """
        return cls().merge(options or {})

    def merge(self, options: Mapping[str, Any]) -> RetryPolicy:
        """A copy with ``options`` (a per-call ``retry_policy`` dict) laid over this one,
        as Celery does with ``dict(setting, **call)``.

        Raises:
            ValidationError: an unknown key or a bad value.
        """
        if not isinstance(options, Mapping):
            raise ValidationError(
                "retry_policy", f"must be a mapping, got {options!r}", value=options
            )
        for key in options:
            if key in _REJECTED_KEYS:
                raise ValidationError(key, _REJECTED_KEYS[key], value=options[key])
            if key not in POLICY_KEYS:
                raise ValidationError(
                    str(key),
                    f"unknown retry policy key (known: {', '.join(POLICY_KEYS)})",
                    value=options[key],
                )
        return attrs.evolve(self, **{str(k): v for k, v in options.items()})

    def as_options(self) -> dict[str, Any]:
        """The policy as a dict that ``from_options`` accepts (for settings and display)."""
        options: dict[str, Any] = {
            "max_retries": self.max_retries,
            "interval_start": self.interval_start,
            "interval_step": self.interval_step,
            "interval_max": self.interval_max,
        }
        if self.timeout is not None:
            options["timeout"] = self.timeout
        if self.jitter:
            options["jitter"] = self.jitter
        if self.retry_errors:
            options["retry_errors"] = self.retry_errors
        return options

    # -- the pure schedule ----------------------------------------------------------

    def intervals(self) -> Iterator[float]:
        """The endless sequence of sleeps before retry 1, 2, 3, … (before jitter).

        This is kombu 5.7's ``fxrange(start, start + interval_max, step,
        repeatlast=True)`` clamped to ``interval_max``, with the same float arithmetic:
        (0, 0.2, 1) gives 0, 0.2, 0.4, 0.6…, 0.8, 1.0, 1.0, …; (1, 2, 4) gives 1, 3, 4, 4, ….
        Note the kombu quirk kept here: once the next value would pass
        ``start + interval_max`` the *last* value repeats, so (0, 0.3, 1) settles on 0.9,
        not on 1.
        """
        start, step, ceiling = self.interval_start, self.interval_step, self.interval_max
        stop = start + ceiling
        current = last = start * 1.0
        while True:
            # ``not stop``: kombu treats a stop of 0 as "no stop" (it means start=max=0,
            # where every clamped value is 0 anyway).
            if not stop or current <= stop:
                last = current
                yield min(current, ceiling)
                current += step
            else:
                # kombu repeats ``current - step``, which float rounding can make one ulp
                # *smaller* than the value it last yielded; repeating that value itself
                # keeps the schedule non-decreasing and differs from kombu by <= 1 ulp.
                yield min(last, ceiling)

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep before retry ``retry_number`` (1 is the first retry).

        With ``jitter`` and an ``rng`` the value is scaled by a uniform factor in
        ``[1 - jitter, 1 + jitter]``; without an ``rng`` no jitter is applied, so the
        method stays a pure function of its arguments.
        """
        if isinstance(retry_number, bool) or not isinstance(retry_number, int):
            raise ValidationError("retry_number", f"must be an int, got {retry_number!r}")
        if retry_number < 1:
            raise ValidationError("retry_number", f"must be >= 1, got {retry_number}")
        value = 0.0
        previous: float | None = None
        for index, value in enumerate(self.intervals(), start=1):
            # The schedule is constant once it stops growing: stop walking there, so a
            # large retry number (max_retries=None) costs O(interval_max / step), not O(n).
            if index == retry_number or value == previous:
                break
            previous = value
        return self.jittered(value, rng)

    def jittered(self, value: float, rng: random.Random | None) -> float:
        """``value`` scaled by this policy's jitter drawn from ``rng`` (unchanged without
        jitter or without an ``rng``)."""
        if not self.jitter or rng is None or not value:
            return value
        return max(0.0, value * (1.0 + rng.uniform(-self.jitter, self.jitter)))

    @property
    def max_attempts(self) -> int | None:
        """``max_retries + 1``, or ``None`` when retrying forever."""
        return None if self.max_retries is None else self.max_retries + 1


def is_recoverable(exc: BaseException, policy: RetryPolicy | None = None) -> bool:
    """Whether the retry driver may retry after ``exc``: a ``TransportError`` that says
    it is recoverable, or an instance of one of the policy's ``retry_errors``."""
    if isinstance(exc, TransportError) and exc.recoverable:
        return True
    return policy is not None and bool(policy.retry_errors) and isinstance(
        exc, policy.retry_errors
    )


class Attempts:
    """The bookkeeping both retry drivers share: what an attempt's failure means.

    A driver makes one after the first attempt failed recoverably (the success path of a
    publish never builds one) and calls ``failed`` after that failure and every later
    one: it counts the attempt and returns how long to sleep before the next, or raises
    ``PublishError`` when the policy gives up. ``reconnect`` says whether the next
    attempt calls ``recover()`` first.

    Args:
        policy: the retry policy.
        retry: ``False`` turns a recoverable error into ``PublishError`` at once.
        deadline: ``monotonic()`` time of ``policy.timeout``, or ``None``.
        monotonic: the clock of ``deadline``.
        rng: the source of jitter (``None``: none, or an unseeded one if the policy
            has jitter).
        task_id: put on the ``PublishError``.
    """

    __slots__ = (
        "_intervals", "_monotonic", "_rng", "attempts", "deadline", "last", "policy",
        "reconnect", "retry", "task_id",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        retry: bool,
        deadline: float | None,
        monotonic: Callable[[], float],
        rng: random.Random | None,
        task_id: str | None,
    ) -> None:
        self.policy = policy
        self.retry = retry
        self.deadline = deadline
        self._monotonic = monotonic
        self._rng = rng if rng is not None or not policy.jitter else random.Random()
        self.task_id = task_id
        self._intervals = policy.intervals()
        #: Attempts made so far (each ``failed`` call counts one).
        self.attempts = 0
        #: The last recoverable error.
        self.last: BaseException | None = None
        #: The next attempt reconnects first (``recover()``).
        self.reconnect = False

    def failed(self, exc: Exception) -> float:
        """An attempt failed recoverably with ``exc`` (``is_recoverable``): the seconds
        to sleep before the next one.

        Raises:
            PublishError: retries exhausted, the deadline would pass before the next
                attempt, or ``retry`` is off (chained from ``exc``).
        """
        self.attempts += 1
        self.last = exc
        policy = self.policy
        # A retry_errors error leaves the connection alone (kombu retries those without
        # reconnecting); a recoverable transport error means reconnect first.
        self.reconnect = isinstance(exc, TransportError) and exc.recoverable
        if not self.retry:
            raise self.give_up("publish failed (retry disabled)") from exc
        if policy.max_retries is not None and self.attempts > policy.max_retries:
            raise self.give_up("publish failed, retries exhausted") from exc
        pause = policy.jittered(next(self._intervals), self._rng)
        if self.deadline is not None:
            remaining = self.deadline - self._monotonic()
            # ">=": an attempt that would start exactly at the deadline is after it.
            if remaining <= 0 or pause >= remaining:
                raise self.deadline_passed() from exc
        return pause

    def give_up(self, why: str, cause: BaseException | None = None) -> PublishError:
        """The ``PublishError`` to raise: ``why``, the attempts, the last error."""
        last = cause if cause is not None else self.last
        assert last is not None  # only called after a failure
        return PublishError(why, attempts=self.attempts, cause=last, task_id=self.task_id)

    def deadline_passed(self, cause: BaseException | None = None) -> PublishError:
        """The ``PublishError`` of a passed ``timeout``."""
        return self.give_up(f"publish deadline of {self.policy.timeout:g} s passed", cause)


def call_with_retry(
    operation: Callable[[], T],
    policy: RetryPolicy | None,
    *,
    retry: bool = True,
    recover: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    task_id: str | None = None,
) -> T:
    """Call ``operation`` and retry it per ``policy`` while it fails recoverably.

    Recoverable errors (``TransportError`` with ``recoverable=True``, plus the policy's
    ``retry_errors``) are retried: ``on_retry(exc, retry_number, delay)`` is called, the
    driver sleeps ``delay``, then calls ``recover()`` (reconnect) and ``operation()``
    again. ``recover()`` is part of the attempt: if it fails recoverably, that attempt
    failed (Celery counts connection attempts the same way). ``recover`` is not called
    after a ``retry_errors`` error, whose connection is assumed to be fine.

    Errors that are not recoverable (``EncodeError``, ``ValidationError``, a
    non-recoverable ``TransportError``, anything else) propagate at once, untouched.

    With ``policy.timeout`` set, the driver never sleeps past the deadline: when the next
    attempt would start after it, it gives up at once rather than sleep in vain. A single
    attempt that blocks is bounded by the transport's own timeouts, not by this deadline
    (``acall_with_retry`` cuts it short).

    Args:
        operation: the publish (any zero-argument callable).
        policy: the policy; ``None`` means ``RetryPolicy()``.
        retry: ``False`` turns a recoverable error into ``PublishError`` at once.
        recover: called before each retry to re-establish the connection.
        sleep: the sleep function (injectable for tests).
        monotonic: the clock for ``policy.timeout`` (injectable for tests).
        rng: the source of jitter; ``None`` creates an unseeded ``random.Random`` only if
            the policy has jitter.
        on_retry: called with ``(exc, retry_number, delay)`` before each sleep.
        task_id: put on the ``PublishError`` so the caller knows which message failed.

    Returns:
        What ``operation`` returned.

    Raises:
        PublishError: retries exhausted, deadline passed, or ``retry=False`` (chained
            ``from`` the last recoverable error, which is also ``.cause``).
    """
    policy = policy if policy is not None else RetryPolicy()
    deadline = None if policy.timeout is None else monotonic() + policy.timeout
    try:
        return operation()  # the common case: no bookkeeping at all
    except Exception as exc:
        if not is_recoverable(exc, policy):
            raise
        attempts = Attempts(policy, retry=retry, deadline=deadline, monotonic=monotonic,
                            rng=rng, task_id=task_id)
        pause = attempts.failed(exc)
        last: Exception = exc
    while True:
        if on_retry is not None:
            on_retry(last, attempts.attempts, pause)
        if pause > 0:
            sleep(pause)
        try:
            if attempts.reconnect and recover is not None:
                recover()
            return operation()
        except Exception as exc:
            if not is_recoverable(exc, policy):
                raise
            pause = attempts.failed(exc)
            last = exc


async def acall_with_retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy | None,
    *,
    retry: bool = True,
    recover: Callable[[], Awaitable[None]] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    task_id: str | None = None,
) -> T:
    """``call_with_retry`` for coroutines: the same schedule and decisions (``Attempts``),
    ``await``-ed attempts and sleeps (``asyncio.sleep``).

    ``policy.timeout`` holds for the whole call, attempts included: it runs under
    ``asyncio.timeout``, so an attempt still running at the deadline is cancelled and
    ``PublishError`` is raised (chained from the last recoverable error, or from the
    ``TimeoutError`` when the first attempt was cut short). A cancelled attempt's outcome
    is unknown, as after a lost connection; a transport that can tell a retry (Redis's
    publish markers) treats it as such. A cancellation from outside (the caller's own
    ``asyncio.timeout``, a closing connection) propagates untouched.

    Raises:
        PublishError: as ``call_with_retry``.
    """
    policy = policy if policy is not None else RetryPolicy()
    if policy.timeout is None:
        try:
            # The common case, awaited here: no bookkeeping and no coroutine around it
            # (each level of coroutines is paid twice per publish, at the await and at
            # the reply).
            return await operation()
        except Exception as exc:
            if not is_recoverable(exc, policy):
                raise
            failed = exc
        return await _retrying(operation, policy, None, retry=retry, recover=recover,
                               sleep=sleep, monotonic=monotonic, rng=rng, on_retry=on_retry,
                               task_id=task_id, failed=failed)
    state: list[Attempts] = []
    deadline = asyncio.timeout(policy.timeout)
    try:
        async with deadline:
            return await _retrying(
                operation, policy, monotonic() + policy.timeout, retry=retry,
                recover=recover, sleep=sleep, monotonic=monotonic, rng=rng,
                on_retry=on_retry, task_id=task_id, state=state,
            )
    except TimeoutError as exc:
        if not deadline.expired():
            raise  # raised by the operation itself, not by the deadline
        attempts = state[0] if state else Attempts(
            policy, retry=retry, deadline=None, monotonic=monotonic, rng=rng, task_id=task_id)
        attempts.attempts += 1  # the attempt the deadline cut short
        cause = attempts.last if attempts.last is not None else exc
        raise attempts.deadline_passed(cause) from cause


async def _retrying(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    deadline: float | None,
    *,
    retry: bool,
    recover: Callable[[], Awaitable[None]] | None,
    sleep: Callable[[float], Awaitable[None]],
    monotonic: Callable[[], float],
    rng: random.Random | None,
    on_retry: Callable[[BaseException, int, float], None] | None,
    task_id: str | None,
    state: list[Attempts] | None = None,
    failed: Exception | None = None,
) -> T:
    """``acall_with_retry`` without its deadline; ``state`` receives the ``Attempts``
    once there is one (the deadline's error reads the count from it). ``failed``: the
    recoverable error of a first attempt already made (else this makes it)."""
    if failed is None:
        try:
            return await operation()
        except Exception as exc:
            if not is_recoverable(exc, policy):
                raise
            failed = exc
    attempts = Attempts(policy, retry=retry, deadline=deadline, monotonic=monotonic,
                        rng=rng, task_id=task_id)
    if state is not None:
        state.append(attempts)
    pause = attempts.failed(failed)
    last: Exception = failed
    while True:
        if on_retry is not None:
            on_retry(last, attempts.attempts, pause)
        if pause > 0:
            await sleep(pause)
        try:
            if attempts.reconnect and recover is not None:
                await recover()
            return await operation()
        except Exception as exc:
            if not is_recoverable(exc, policy):
                raise
            pause = attempts.failed(exc)
            last = exc
