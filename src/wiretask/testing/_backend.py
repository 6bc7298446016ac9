"""``check_backend``: the result backend conformance kit (see ``wiretask.testing``).

Each check follows one rule of ``wiretask.results.base``'s docstring; the names say
which.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from wiretask.errors import (
    ConnectionLost,
    EncodeError,
    TransportError,
    ValidationError,
    WiretaskError,
)
from wiretask.protocol import states
from wiretask.results.base import DeferredStore, ResultBackend, Subscription
from wiretask.testing._runner import ConformanceReport, expect, fail, run_checks, select

__all__ = ["BACKEND_CHECKS", "check_backend"]

log = logging.getLogger(__name__)

#: Every check of ``check_backend``, in the order they run.
BACKEND_CHECKS: tuple[str, ...] = (
    "store_get_forget",
    "meta_validation",
    "result_serializer",
    "first_final_outcome_wins",
    "expiry",
    "subscribe_before_any_state",
    "late_subscriber",
    "subscribe_after_ready",
    "subscribe_timeout",
    "every_state_once_in_order",
    "deferred_store",
    "error_translation",
    "close_is_idempotent",
)


def check_backend(
    factory: Callable[[float | None], ResultBackend],
    *,
    broken_factory: Callable[[str], ResultBackend] | None = None,
    skip: Mapping[str, str] | None = None,
    only: Iterable[str] | None = None,
    fail_fast: bool = True,
    check_timeout: float = 60.0,
    expires: float = 1.0,
    wait: float = 10.0,
    states_in_a_row: int = 50,
) -> ConformanceReport:
    """Run the result backend conformance checks against backends made by ``factory``.

    Args:
        factory: called with ``expires`` (seconds a result is kept; ``None``: forever),
            returns a new backend with that expiry and the default ``json`` result
            serializer; all of them must share one store (the same database, Redis
            database, memory name), as several checks store with one and read with
            another. The kit uses fresh, unique task ids and forgets them afterwards.
        broken_factory: called with a password, returns a backend that cannot reach its
            store (e.g. at ``closed_port()``) and whose URL carries that password; the
            error-translation check uses it. Without it that check is skipped.
        skip: ``{check name: reason}`` of checks to skip.
        only: run only these checks.
        fail_fast: stop at the first failure (default) or run every check first.
        check_timeout: seconds each check may take before it counts as hung.
        expires: the short expiry (seconds) the expiry check uses.
        wait: seconds to wait for a state that must arrive.
        states_in_a_row: states stored back to back in the ordering check.

    Returns:
        The report: checks passed, skipped (with reasons).

    Raises:
        ConformanceError: a check failed (an ``AssertionError``).
        ValueError: an unknown check name in ``skip`` or ``only``.
    """
    skipping, selected = select(BACKEND_CHECKS, skip, only)
    probe = factory(None)
    kit = _BackendKit(factory, probe, broken_factory=broken_factory, expires=expires,
                      wait=wait, states_in_a_row=states_in_a_row)
    url = probe.url
    try:
        return run_checks(kit, url, BACKEND_CHECKS, skip=skipping, selected=selected,
                          fail_fast=fail_fast, check_timeout=check_timeout)
    finally:
        _close_quietly(probe)


def _close_quietly(closable: ResultBackend | Subscription) -> None:
    try:
        closable.close()
    except Exception:
        log.debug("conformance: closing %r failed", closable, exc_info=True)


def _through(backend: ResultBackend, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` as the backend's result serializer carries it (encoded, decoded)."""
    encoded = backend.codec.encode(meta)
    return backend.codec.decode(encoded.data, encoded.content_type, encoded.content_encoding)


class _BackendKit:
    """The checks. Each ``check_<name>`` opens backends through ``self.new()`` and task
    ids through ``self.task_id()``; ``cleanup`` forgets them and closes the backends."""

    def __init__(
        self, factory: Callable[[float | None], ResultBackend], probe: ResultBackend, *,
        broken_factory: Callable[[str], ResultBackend] | None, expires: float, wait: float,
        states_in_a_row: int,
    ) -> None:
        self.factory = factory
        self.probe = probe
        self.broken_factory = broken_factory
        self.expires = expires
        self.wait = wait
        self.states_in_a_row = states_in_a_row
        self.run_id = uuid.uuid4().hex[:10]
        self._opened: list[ResultBackend | Subscription] = []
        self._task_ids: list[str] = []
        self._lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------

    def not_applicable(self, name: str) -> str | None:
        if name == "deferred_store" and not isinstance(self.probe, DeferredStore):
            return "the backend does not offer DeferredStore (pending, store_pending)"
        if name == "error_translation" and self.broken_factory is None:
            return ("no broken_factory given (a factory of a backend that cannot reach its "
                    "store)")
        return None

    def check(self, name: str) -> Callable[[], None]:
        check: Callable[[], None] = getattr(self, f"check_{name}")
        return check

    def cleanup(self, *, hung: bool) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
            task_ids, self._task_ids = self._task_ids, []
        if hung:
            return  # closing what a hung check uses could hang us too
        try:
            cleaner = self.factory(None)
            opened.append(cleaner)
            for task_id in task_ids:
                cleaner.forget(task_id)
        except Exception:  # best effort: unique ids harm nobody (and they expire)
            log.debug("conformance: forgetting the check's results failed", exc_info=True)
        for closable in reversed(opened):
            _close_quietly(closable)

    def new(self, expires: float | None = None) -> ResultBackend:
        backend = self.factory(expires)
        with self._lock:
            self._opened.append(backend)
        return backend

    def subscribe(self, backend: ResultBackend, task_id: str) -> Subscription:
        subscription = backend.subscribe(task_id)
        with self._lock:
            self._opened.append(subscription)
        return subscription

    def task_id(self, label: str) -> str:
        task_id = f"wiretask-conformance-{self.run_id}-{label}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            self._task_ids.append(task_id)
        return task_id

    def next_state(self, subscription: Subscription, what: str) -> dict[str, Any]:
        meta = subscription.next(self.wait)
        if meta is None:
            fail(f"{what} was not delivered within {self.wait:g} s")
        return meta

    def expect_finished(self, subscription: Subscription, after: str) -> None:
        expect(subscription.finished, f"the subscription is not finished after {after}")
        started = time.monotonic()
        extra = subscription.next(self.wait)
        expect(extra is None, f"next() after {after} returned {extra!r}, expected None")
        expect(time.monotonic() - started < self.wait / 2,
               "next() of a finished subscription waited instead of returning None")

    @staticmethod
    def status_of(meta: Mapping[str, Any] | None) -> str | None:
        return None if meta is None else str(meta.get("status"))

    # -- the checks ---------------------------------------------------------------------

    def check_store_get_forget(self) -> None:
        writer, reader = self.new(), self.new()
        task_id = self.task_id("basic")
        expect(reader.get(task_id) is None, "get() of a task never stored is not None")
        meta = states.make_meta(task_id, states.STARTED, {"pid": 1})
        writer.store(task_id, meta)
        got = reader.get(task_id)
        expect(self.status_of(got) == states.STARTED and got is not None
               and got.get("task_id") == task_id,
               f"get() after store(STARTED) returned {got!r}")
        writer.store(task_id, states.make_meta(task_id, states.SUCCESS, 42))
        got = reader.get(task_id)
        expect(got is not None and got.get("status") == states.SUCCESS
               and got.get("result") == 42, f"get() after store(SUCCESS) returned {got!r}")
        reader.forget(task_id)
        expect(writer.get(task_id) is None, "get() after forget() is not None")
        # A forgotten result starts afresh: even a final state may be stored again.
        writer.store(task_id, states.make_meta(task_id, states.FAILURE, ValueError("again")))
        expect(self.status_of(reader.get(task_id)) == states.FAILURE,
               "a store after forget() was ignored")
        reader.forget(task_id)
        reader.forget(task_id)  # forgetting twice is fine

    def check_meta_validation(self) -> None:
        backend = self.new()
        task_id = self.task_id("validation")
        good = states.make_meta(task_id, states.SUCCESS, 1)
        bad: list[tuple[str, Callable[[], object]]] = [
            ("store('', meta)", lambda: backend.store("", good)),
            ("store(id, a list)", lambda: backend.store(task_id, cast(Any, [good]))),
            ("store(id, meta without status)",
             lambda: backend.store(task_id, {k: v for k, v in good.items() if k != "status"})),
            ("store(id, meta of another task)",
             lambda: backend.store(task_id, states.make_meta("other", states.SUCCESS, 1))),
        ]
        for what, call in bad:
            try:
                call()
            except ValidationError:
                continue
            except Exception as exc:
                fail(f"{what} raised {type(exc).__name__}: {exc}, not ValidationError")
            fail(f"{what} was accepted; it must raise ValidationError")
        expect(backend.get(task_id) is None, "a refused store left a state behind")

    def check_result_serializer(self) -> None:
        backend = self.new()
        task_id = self.task_id("serializer")
        unserializable = states.make_meta(task_id, states.SUCCESS, object())
        try:
            backend.store(task_id, unserializable)
        except EncodeError:
            pass
        except Exception as exc:
            fail(f"storing a result the serializer cannot carry raised "
                 f"{type(exc).__name__}: {exc}, not EncodeError")
        else:
            fail(f"a result that the {backend.codec.serializer!r} result serializer cannot "
                 "carry (an object()) was stored")
        expect(backend.get(task_id) is None, "a refused store left a state behind")
        # What comes back is what the result serializer makes of it (tuples come back
        # as lists from JSON, and so on), whichever backend stores it.
        meta = states.make_meta(task_id, states.SUCCESS,
                                {"tuple": (1, 2), "text": "héllo ✓", "nested": [{"a": None}]})
        backend.store(task_id, meta)
        expected = _through(backend, meta)
        got = backend.get(task_id)
        expect(got == expected,
               f"get() returned {got!r}; through the result serializer it is {expected!r}")

    def check_first_final_outcome_wins(self) -> None:
        backend, other = self.new(), self.new()
        for final in (states.SUCCESS, states.FAILURE, states.REVOKED):
            task_id = self.task_id(f"final-{final.lower()}")
            backend.store(task_id, states.make_meta(task_id, states.STARTED, None))
            result: object = 1 if final == states.SUCCESS else ValueError(final)
            first = states.make_meta(task_id, final, result)
            backend.store(task_id, first)
            stored = backend.get(task_id)
            for later, value in ((states.SUCCESS, "later"), (states.FAILURE, ValueError("x")),
                                 (states.REVOKED, ValueError("r")), (states.STARTED, None),
                                 ("PROGRESS", {"i": 1})):
                other.store(task_id, states.make_meta(task_id, later, value))
                got = backend.get(task_id)
                expect(got == stored,
                       f"a {later} stored after {final} replaced it: get() is {got!r}")

    def check_expiry(self) -> None:
        short = self.expires
        backend = self.new(short)
        expect(backend.expires == short,
               f"factory({short:g}) made a backend with expires={backend.expires!r}")
        forever = self.new(None)
        expect(forever.expires is None,
               f"factory(None) made a backend with expires={forever.expires!r}")
        kept, gone = self.task_id("kept"), self.task_id("gone")
        forever.store(kept, states.make_meta(kept, states.SUCCESS, "kept"))
        started = time.monotonic()
        backend.store(gone, states.make_meta(gone, states.STARTED, None))
        # Expiry counts from the last store: store again at 60 % of it ...
        time.sleep(max(0.6 * short - (time.monotonic() - started), 0))
        restarted = time.monotonic()
        backend.store(gone, states.make_meta(gone, states.SUCCESS, "gone"))
        # ... and the result is still there past the first store's expiry,
        time.sleep(max(1.2 * short - (time.monotonic() - started), 0))
        got = backend.get(gone)
        if time.monotonic() - restarted < short:  # the read was surely before the expiry
            expect(self.status_of(got) == states.SUCCESS,
                   f"a result expired {short:g} s after its first store, not its last")
        # ... and gone once ``expires`` passed since the last one.
        deadline = restarted + short + self.wait
        time.sleep(max(restarted + short - time.monotonic(), 0))
        while backend.get(gone) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        expect(backend.get(gone) is None,
               f"a result stored with expires={short:g} is still readable "
               f"{time.monotonic() - restarted:.1f} s later")
        expect(forever.get(kept) is not None, "a result stored with expires=None expired")

    def check_subscribe_before_any_state(self) -> None:
        backend, writer = self.new(), self.new()
        task_id = self.task_id("early")
        subscription = self.subscribe(backend, task_id)
        expect(not subscription.finished, "a new subscription is finished")
        expect(subscription.next(0.1) is None, "next() before any store returned a state")
        stored = [
            states.make_meta(task_id, states.STARTED, None),
            states.make_meta(task_id, "PROGRESS", {"done": 1}),
            states.make_meta(task_id, states.SUCCESS, "result"),
        ]
        for meta in stored:
            writer.store(task_id, meta)
        for meta in stored:
            got = self.next_state(subscription, f"the {meta['status']} state")
            expect(got == meta, f"the subscription delivered {got!r}, expected {meta!r}")
        self.expect_finished(subscription, "SUCCESS")

    def check_late_subscriber(self) -> None:
        backend, writer = self.new(), self.new()
        task_id = self.task_id("late")
        writer.store(task_id, states.make_meta(task_id, states.STARTED, None))
        current = states.make_meta(task_id, "PROGRESS", {"done": 1})
        writer.store(task_id, current)
        subscription = self.subscribe(backend, task_id)
        got = self.next_state(subscription, "the current state to a late subscriber")
        expect(got == current, f"a late subscriber first got {got!r}, expected the current "
               f"state {current!r}")
        expect(subscription.next(0.1) is None, "a late subscriber got an older state too")
        final = states.make_meta(task_id, states.SUCCESS, 7)
        writer.store(task_id, final)
        got = self.next_state(subscription, "a state stored after a late subscription")
        expect(got == final, f"the late subscriber then got {got!r}, expected {final!r}")
        self.expect_finished(subscription, "SUCCESS")

    def check_subscribe_after_ready(self) -> None:
        backend = self.new()
        task_id = self.task_id("ready")
        final = states.make_meta(task_id, states.FAILURE, ValueError("boom"))
        backend.store(task_id, final)
        subscription = self.subscribe(self.new(), task_id)
        got = self.next_state(subscription, "the final state of a finished task")
        expect(self.status_of(got) == states.FAILURE and got == backend.get(task_id),
               f"a subscription to a finished task got {got!r}")
        self.expect_finished(subscription, "FAILURE")

    def check_subscribe_timeout(self) -> None:
        backend = self.new()
        subscription = self.subscribe(backend, self.task_id("quiet"))
        started = time.monotonic()
        got = subscription.next(0.3)
        took = time.monotonic() - started
        expect(got is None, f"next(0.3) without any store returned {got!r}")
        expect(took < 0.3 + self.wait, f"next(0.3) took {took:.2f} s")
        subscription.close()
        subscription.close()  # idempotent

    def check_every_state_once_in_order(self) -> None:
        backend, writer = self.new(), self.new()
        task_id = self.task_id("order")
        subscription = self.subscribe(backend, task_id)
        stored = [states.make_meta(task_id, "PROGRESS", {"i": i})
                  for i in range(self.states_in_a_row)]
        stored.append(states.make_meta(task_id, states.SUCCESS, "done"))
        errors: list[BaseException] = []

        def store_all() -> None:
            try:
                for meta in stored:
                    writer.store(task_id, meta)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=store_all, daemon=True)
        thread.start()
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.wait * 3
        while not subscription.finished and time.monotonic() < deadline:
            meta = subscription.next(max(deadline - time.monotonic(), 0.01))
            if meta is not None:
                got.append(meta)
        thread.join(self.wait)
        if errors:
            fail(f"storing states raised {errors[0]!r}")
        expect(subscription.finished, f"the final state was not delivered (got {len(got)} "
               f"of {len(stored)} states)")
        expect(got == stored, f"{len(stored)} states stored back to back were delivered as "
               f"{[m.get('result') for m in got]}: every state once, in store order")

    def check_deferred_store(self) -> None:
        backend = self.new()
        assert isinstance(backend, DeferredStore)  # not_applicable() skips otherwise
        task_id = self.task_id("deferred")
        try:
            backend.pending(task_id, {"status": states.SUCCESS, "task_id": "other"})
        except ValidationError:
            pass
        else:
            fail("pending() accepted the meta dict of another task")
        try:
            backend.pending(task_id, states.make_meta(task_id, states.SUCCESS, object()))
        except EncodeError:
            pass
        else:
            fail("pending() accepted a result the result serializer cannot carry")
        started = backend.pending(task_id, states.make_meta(task_id, states.STARTED, None))
        expect(backend.get(task_id) is None, "pending() wrote the state")
        backend.store_pending(started)
        expect(self.status_of(backend.get(task_id)) == states.STARTED,
               "store_pending() did not write the state")
        final = states.make_meta(task_id, states.SUCCESS, "first")
        backend.store_pending(backend.pending(task_id, final))
        backend.store_pending(backend.pending(task_id, states.make_meta(
            task_id, states.FAILURE, ValueError("later"))))
        got = backend.get(task_id)
        expect(got == _through(backend, final),
               f"store_pending() replaced a final state: get() is {got!r}")

    def check_error_translation(self) -> None:
        assert self.broken_factory is not None  # not_applicable() skips otherwise
        secret = f"wiretask-secret-{uuid.uuid4().hex}"
        backend = self.broken_factory(secret)
        with self._lock:
            self._opened.append(backend)
        expect(secret not in backend.url, f"the backend's url shows its password: {backend.url!r}")
        task_id = self.task_id("unreachable")
        meta = states.make_meta(task_id, states.SUCCESS, 1)
        calls: list[tuple[str, Callable[[], object]]] = [
            ("store()", lambda: backend.store(task_id, meta)),
            ("get()", lambda: backend.get(task_id)),
            ("forget()", lambda: backend.forget(task_id)),
            ("subscribe().next()", lambda: backend.subscribe(task_id).next(0.5)),
        ]
        if isinstance(backend, DeferredStore):
            calls.append(("store_pending()",
                          lambda: cast(DeferredStore, backend).store_pending(
                              cast(DeferredStore, backend).pending(task_id, meta))))
        for what, call in calls:
            try:
                call()
            except ConnectionLost as exc:
                shown = f"{exc} {exc!r} {exc.url or ''}"
                if secret in shown:
                    fail(f"{what} on an unreachable store: the error shows the password: {exc}")
                if exc.__cause__ is None or isinstance(exc.__cause__, WiretaskError):
                    fail(f"{what} on an unreachable store: {type(exc).__name__} is not "
                         f"chained (raise ... from) to the driver's error")
                continue
            except TransportError as exc:
                fail(f"{what} on an unreachable store raised {type(exc).__name__}: {exc}; "
                     "expected ConnectionLost (recoverable)")
            except Exception as exc:
                fail(f"{what} on an unreachable store let a driver error escape: "
                     f"{type(exc).__name__}: {exc}")
            fail(f"{what} on an unreachable store did not raise")
        try:
            backend.close()
        except Exception as exc:
            fail(f"close() of a backend whose store is unreachable raised {exc!r}")

    def check_close_is_idempotent(self) -> None:
        backend = self.new()
        task_id = self.task_id("close")
        backend.store(task_id, states.make_meta(task_id, states.SUCCESS, 1))
        subscription = backend.subscribe(task_id)
        backend.close()
        backend.close()
        subscription.close()
        expect(self.status_of(self.new().get(task_id)) == states.SUCCESS,
               "a result stored before close() is gone")
