"""The public conformance kit: check that a transport keeps the Transport contract.

Usable with or without pytest::

    from wiretask.testing import check_transport
    from wiretask.transports.sqlite import SQLiteTransport

    report = check_transport(lambda: SQLiteTransport("/tmp/kit.db"))
    print(report)                       # which checks ran, which were skipped and why

    check_transport(lambda: RedisTransport("redis://127.0.0.1:6379/15"))

``factory`` is called many times; every transport it returns must talk to the **same**
broker namespace (the same database file, Redis database, memory name), because several
checks hand a message from one instance to another. The kit uses fresh, unique queue
names for every check, so the namespace may hold other data, and it purges its queues
afterwards (dead letters stay: the contract has no way to delete them).

A failed check raises ``ConformanceError`` (an ``AssertionError``, so pytest shows it as
a test failure) naming the check and what was wrong; with ``fail_fast=False`` every
check runs first and the error lists all failures. Each check runs under a time limit:
a transport that hangs fails the check instead of hanging the caller.

For transports with ``capabilities.multi_process``, pass ``process_factory``: a
*picklable* zero-argument callable (e.g. ``functools.partial(SQLiteTransport, path)``).
The kit then also consumes from separate Python processes (started with
``sys.executable``), which must be able to import the factory.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import attrs

from wiretask.errors import TransportError
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.transports.base import Delivery, Transport

__all__ = ["CHECKS", "ConformanceError", "ConformanceReport", "check_transport"]

log = logging.getLogger(__name__)

#: Every check, in the order they run.
CHECKS: tuple[str, ...] = (
    "publish_receive_ack",
    "receive_timeout",
    "reject_requeue",
    "reject_drop",
    "settle_twice",
    "delayed_delivery",
    "priority_order",
    "expiration_property",
    "dead_letter",
    "multiple_queues",
    "publish_many",
    "large_and_binary_bodies",
    "headers_properties_roundtrip",
    "unacked_returns_on_close",
    "size_purge_peek",
    "concurrent_consumers",
    "process_consumers",
)


@attrs.frozen
class ConformanceReport:
    """What ``check_transport`` did.

    Attributes:
        transport: the URL of the transport checked (password masked by the transport).
        passed: names of the checks that passed, in order.
        skipped: ``(name, reason)`` of checks that did not apply or were skipped.
        failed: ``(name, problem)`` of checks that failed (only with ``fail_fast=False``;
            a report with failures is attached to the ``ConformanceError``).
    """

    transport: str
    passed: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    failed: tuple[tuple[str, str], ...] = ()

    @property
    def ran(self) -> tuple[str, ...]:
        """Names of the checks that ran (passed or failed), in order."""
        failed = {name for name, _ in self.failed}
        return tuple(name for name in CHECKS if name in failed or name in self.passed)

    def __str__(self) -> str:
        lines = [f"conformance of {self.transport}: {len(self.passed)} passed, "
                 f"{len(self.skipped)} skipped, {len(self.failed)} failed"]
        lines += [f"  PASS {name}" for name in self.passed]
        lines += [f"  SKIP {name}: {reason}" for name, reason in self.skipped]
        lines += [f"  FAIL {name}: {problem}" for name, problem in self.failed]
        return "\n".join(lines)


class ConformanceError(AssertionError):
    """A transport broke the contract. ``check`` names the check, ``problem`` says what
    went wrong; ``report`` is the full report when every check was run."""

    def __init__(
        self, check: str, problem: str, *, report: ConformanceReport | None = None
    ) -> None:
        message = f"transport conformance check {check!r} failed: {problem}"
        if report is not None and len(report.failed) > 1:
            others = "; ".join(f"{name}: {why}" for name, why in report.failed[1:])
            message += f" (also failed: {others})"
        super().__init__(message)
        self.check = check
        self.problem = problem
        self.report = report


class _Failed(Exception):
    """Raised inside a check; becomes a ConformanceError naming the check."""


def _expect(condition: object, problem: str) -> None:
    if not condition:
        raise _Failed(problem)


def _fail(problem: str) -> NoReturn:
    raise _Failed(problem)


def check_transport(
    factory: Callable[[], Transport],
    *,
    process_factory: Callable[[], Transport] | None = None,
    skip: Mapping[str, str] | None = None,
    only: Iterable[str] | None = None,
    fail_fast: bool = True,
    check_timeout: float = 60.0,
    delay: float = 0.3,
    wait: float = 10.0,
    large_body_size: int = 5 * 1024 * 1024,
    messages: int = 200,
    consumers: int = 4,
    clock_tolerance: float = 0.002,
) -> ConformanceReport:
    """Run the transport conformance checks against transports made by ``factory``.

    Args:
        factory: returns a new (connected or connectable) transport; all of them must
            share one broker namespace (see the module docs).
        process_factory: a picklable factory for the multi-process check; without it
            that check is skipped.
        skip: ``{check name: reason}`` of checks to skip, e.g. a known limitation.
        only: run only these checks.
        fail_fast: stop at the first failure (default) or run every check first.
        check_timeout: seconds each check may take before it counts as hung.
        delay: seconds of ``not_before`` used by the delayed-delivery checks.
        wait: seconds to wait for a message that must arrive.
        large_body_size: bytes of the large random body.
        messages: messages in the concurrency checks.
        consumers: consumer threads in the concurrency check.
        clock_tolerance: seconds of clock rounding allowed when checking that a
            delayed message was not delivered before its ``not_before``.

    Returns:
        The report: checks passed, skipped (with reasons).

    Raises:
        ConformanceError: a check failed (an ``AssertionError``).
        ValueError: an unknown check name in ``skip`` or ``only``.
    """
    skip = dict(skip or {})
    selected = set(CHECKS if only is None else only)
    unknown = (set(skip) | selected) - set(CHECKS)
    if unknown:
        raise ValueError(
            f"unknown check name(s) {', '.join(sorted(unknown))}; known: {', '.join(CHECKS)}"
        )
    kit = _Kit(
        factory, process_factory=process_factory, delay=delay, wait=wait,
        large_body_size=large_body_size, messages=messages, consumers=consumers,
        clock_tolerance=clock_tolerance,
    )
    probe = factory()
    url = probe.url
    try:
        probe.close()
    except TransportError:
        pass

    passed: list[str] = []
    skipped: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    for name in CHECKS:
        if name not in selected:
            skipped.append((name, "not selected"))
            continue
        if name in skip:
            skipped.append((name, skip[name]))
            continue
        reason = kit.not_applicable(name, probe)
        if reason is not None:
            skipped.append((name, reason))
            continue
        problem = kit.run(name, check_timeout)
        if problem is None:
            passed.append(name)
            continue
        failed.append((name, problem))
        if fail_fast:
            raise ConformanceError(name, problem)
    report = ConformanceReport(url, tuple(passed), tuple(skipped), tuple(failed))
    if failed:
        raise ConformanceError(failed[0][0], failed[0][1], report=report)
    return report


class _Kit:
    """The checks. Each ``check_<name>`` method opens transports through ``self.new()``
    and queues through ``self.queue()``; ``run`` closes and purges them afterwards."""

    def __init__(
        self, factory: Callable[[], Transport], *,
        process_factory: Callable[[], Transport] | None, delay: float, wait: float,
        large_body_size: int, messages: int, consumers: int, clock_tolerance: float,
    ) -> None:
        self.factory = factory
        self.process_factory = process_factory
        self.delay = delay
        self.wait = wait
        self.large_body_size = large_body_size
        self.messages = messages
        self.consumers = consumers
        self.clock_tolerance = clock_tolerance
        self.run_id = uuid.uuid4().hex[:10]
        self._opened: list[Transport] = []
        self._queues: list[str] = []
        self._lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------

    def not_applicable(self, name: str, probe: Transport) -> str | None:
        caps = probe.capabilities
        if name == "priority_order" and not caps.priorities:
            return "the transport does not support priorities (capabilities.priorities)"
        if name == "process_consumers":
            if not caps.multi_process:
                return "the transport is in-process only (capabilities.multi_process)"
            if self.process_factory is None:
                return "no process_factory given (a picklable factory is needed)"
        return None

    def run(self, name: str, timeout: float) -> str | None:
        """Run one check in a thread, bounded by ``timeout``; return the problem or None."""
        outcome: list[str | None] = []
        check: Callable[[], None] = getattr(self, f"check_{name}")

        def body() -> None:
            try:
                check()
                outcome.append(None)
            except _Failed as exc:
                outcome.append(str(exc))
            except Exception as exc:  # a crash is a failure of the check, with the cause
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                outcome.append(f"raised {detail}")

        thread = threading.Thread(target=body, name=f"wiretask-conformance-{name}",
                                  daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            # The hung thread cannot be stopped; it is a daemon, so it cannot keep the
            # interpreter alive either. Its transports are left alone: closing them
            # under a hung operation could hang us too.
            with self._lock:
                self._opened.clear()
                self._queues.clear()
            return f"did not finish within {timeout:g} s (a receive or settle hung?)"
        self._cleanup()
        return outcome[0] if outcome else "ended without a result"

    def _cleanup(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
            queues, self._queues = self._queues, []
        try:
            cleaner = self.factory()
            for queue in queues:
                cleaner.purge(queue)
            opened.append(cleaner)
        except Exception:  # best effort: leftovers in unique queues harm nobody
            log.debug("conformance: purging the check's queues failed", exc_info=True)
        for transport in opened:
            try:
                transport.close()
            except Exception:
                log.debug("conformance: closing a transport failed", exc_info=True)

    def new(self) -> Transport:
        transport = self.factory()
        with self._lock:
            self._opened.append(transport)
        transport.connect()
        return transport

    def queue(self, label: str) -> str:
        name = f"wiretask-conformance-{self.run_id}-{label}-{len(self._queues)}"
        with self._lock:
            self._queues.append(name)
        return name

    @staticmethod
    def frame(body: bytes, **properties: Any) -> Frame:
        return Frame(
            body=body, content_type="application/octet-stream", content_encoding="binary",
            headers={"id": uuid.uuid4().hex, "task": "wiretask.conformance"},
            properties=properties,
        )

    def must_receive(self, transport: Transport, queues: list[str], what: str) -> Delivery:
        delivery = transport.receive(queues, timeout=self.wait)
        if delivery is None:
            _fail(f"{what} was not received within {self.wait:g} s")
        return delivery

    def must_be_empty(self, transport: Transport, queues: list[str], why: str) -> None:
        delivery = transport.receive(queues, timeout=0.2)
        if delivery is not None:
            body = delivery.frame.body[:40]
            delivery.reject(requeue=True)
            _fail(f"{why}, but receive returned a message (body {body!r})")

    # -- the checks ---------------------------------------------------------------------

    def check_publish_receive_ack(self) -> None:
        t = self.new()
        q = self.queue("basic")
        sent = self.frame(b"hello")
        t.declare_queue(q)
        t.publish(sent, Route(q))
        d = self.must_receive(t, [q], "a published message")
        _expect(d.frame == sent, f"received {d.frame!r}, sent {sent!r}")
        _expect(d.queue == q, f"delivery.queue is {d.queue!r}, expected {q!r}")
        _expect(d.redelivered is False, "a first delivery is marked redelivered")
        d.ack()
        self.must_be_empty(t, [q], "an acked message must be gone")
        _expect(t.size(q) == 0, f"size() is {t.size(q)} after the only message was acked")

    def check_receive_timeout(self) -> None:
        t = self.new()
        q = self.queue("empty")
        started = time.monotonic()
        got = t.receive([q], timeout=0.3)
        _expect(got is None, "receive on an empty queue returned a message")
        # A bound against hanging, not a speed requirement.
        _expect(time.monotonic() - started < 0.3 + self.wait,
                "receive(timeout=0.3) on an empty queue blocked far longer than asked")
        _expect(t.receive([q], timeout=0) is None, "receive(timeout=0) returned a message")

    def check_reject_requeue(self) -> None:
        t = self.new()
        q = self.queue("requeue")
        t.publish(self.frame(b"again"), Route(q))
        first = self.must_receive(t, [q], "the message")
        first.reject(requeue=True)
        second = self.must_receive(t, [q], "a message rejected with requeue=True")
        _expect(second.frame.body == b"again", f"requeued body came back as {second.frame.body!r}")
        _expect(second.redelivered is True, "a requeued message is not marked redelivered")
        second.ack()

    def check_reject_drop(self) -> None:
        t = self.new()
        q = self.queue("drop")
        t.publish(self.frame(b"drop me"), Route(q))
        self.must_receive(t, [q], "the message").reject()
        self.must_be_empty(t, [q], "reject() without requeue must drop the message")
        _expect(t.size(q) == 0, f"size() is {t.size(q)} after the message was rejected")

    def check_settle_twice(self) -> None:
        t = self.new()
        q = self.queue("twice")
        t.publish_many([Outgoing(self.frame(str(i).encode()), Route(q)) for i in range(3)])
        settle: dict[str, Callable[[Delivery], None]] = {
            "ack": lambda d: d.ack(),
            "reject": lambda d: d.reject(),
            "reject(requeue=True)": lambda d: d.reject(requeue=True),
            "dead_letter": lambda d: d.dead_letter("conformance: settle twice"),
        }
        # (first settlement, the settlements that must then fail)
        plan = [
            ("ack", ["ack", "reject", "reject(requeue=True)", "dead_letter"]),
            ("reject", ["ack"]),
            ("dead_letter", ["reject(requeue=True)"]),
        ]
        for first, seconds in plan:
            d = self.must_receive(t, [q], "a message")
            settle[first](d)
            for second in seconds:
                try:
                    settle[second](d)
                except TransportError:
                    continue
                _fail(f"{second} after {first} did not raise TransportError")
        self.must_be_empty(t, [q], "every message was settled once")

    def check_delayed_delivery(self) -> None:
        t = self.new()
        q = self.queue("delayed")
        not_before = datetime.now(UTC) + timedelta(seconds=self.delay)
        t.publish(self.frame(b"later"), Route(q), not_before=not_before)
        early = t.receive([q], timeout=self.delay / 2)
        if early is not None:
            at = time.time()
            early.reject(requeue=True)
            _expect(at >= not_before.timestamp() - self.clock_tolerance,
                    f"a message with not_before was delivered {not_before.timestamp() - at:.3f}"
                    " s early")
        d = self.must_receive(t, [q], "a delayed message after its not_before")
        at = time.time()
        _expect(at >= not_before.timestamp() - self.clock_tolerance,
                f"a delayed message was delivered {not_before.timestamp() - at:.3f} s early")
        _expect(d.frame.body == b"later", f"delayed body came back as {d.frame.body!r}")
        d.ack()

    def check_priority_order(self) -> None:
        t = self.new()
        caps = t.capabilities
        q = self.queue("priority")
        top = caps.max_priority
        sent = [(b"low-1", 0), (b"high-1", top), (b"low-2", 0), (b"high-2", top)]
        t.publish_many([Outgoing(self.frame(body, priority=p), Route(q)) for body, p in sent])
        # Wait until all four are visible, so that the order is the broker's, not timing.
        deadline = time.monotonic() + self.wait
        while t.size(q) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.01)
        if caps.priority_order == "higher-first":
            expected = [b"high-1", b"high-2", b"low-1", b"low-2"]
        else:
            expected = [b"low-1", b"low-2", b"high-1", b"high-2"]
        got = []
        for _ in sent:
            d = self.must_receive(t, [q], "a prioritised message")
            got.append(d.frame.body)
            d.ack()
        _expect(got == expected,
                f"priority_order={caps.priority_order!r} with priorities 0 and {top}: "
                f"received {got}, expected {expected} (FIFO within a priority)")

    def check_expiration_property(self) -> None:
        t = self.new()
        q = self.queue("expiration")
        t.publish(self.frame(b"ttl", expiration="60000"), Route(q))
        d = self.must_receive(t, [q], "a message with an expiration property")
        got = d.frame.properties.get("expiration")
        _expect(got == "60000", f"the expiration property came back as {got!r}, not '60000'")
        d.ack()
        if t.capabilities.per_message_ttl:
            t.publish(self.frame(b"expires", expiration="50"), Route(q))
            time.sleep(0.5)
            t.publish(self.frame(b"fresh"), Route(q))
            d = self.must_receive(t, [q], "a message published after an expired one")
            _expect(d.frame.body == b"fresh",
                    "per_message_ttl is claimed, but a message past its 50 ms expiration "
                    "was delivered")
            d.ack()

    def check_dead_letter(self) -> None:
        t = self.new()
        q = self.queue("dead")
        sent = self.frame(b"poison", correlation_id="c-1")
        t.publish(sent, Route(q))
        self.must_receive(t, [q], "the message").dead_letter("conformance: cannot decode")
        self.must_be_empty(t, [q], "a dead-lettered message must leave the queue")
        letters = t.dead_letters(q)
        _expect(len(letters) == 1, f"dead_letters() returned {len(letters)} entries, not 1")
        [letter] = letters
        _expect(letter.reason == "conformance: cannot decode",
                f"dead letter reason is {letter.reason!r}")
        _expect(letter.queue == q, f"dead letter queue is {letter.queue!r}, not {q!r}")
        _expect(letter.frame is not None and letter.frame.body == sent.body
                and letter.frame.headers == sent.headers,
                f"dead letter frame is {letter.frame!r}, expected {sent!r}")

    def check_multiple_queues(self) -> None:
        t = self.new()
        a, b = self.queue("multi-a"), self.queue("multi-b")
        t.publish(self.frame(b"from-a"), Route(a))
        t.publish(self.frame(b"from-b"), Route(b))
        got = {}
        for _ in range(2):
            d = self.must_receive(t, [a, b], "a message from one of two queues")
            got[d.frame.body] = d.queue
            d.ack()
        _expect(got == {b"from-a": a, b"from-b": b},
                f"receive([a, b]) gave {got}, expected one message from each queue")

    def check_publish_many(self) -> None:
        t = self.new()
        q, other = self.queue("batch"), self.queue("batch-other")
        not_before = datetime.now(UTC) + timedelta(seconds=self.delay)
        batch = [Outgoing(self.frame(f"m{i}".encode()), Route(q)) for i in range(10)]
        batch.insert(4, Outgoing(self.frame(b"other"), Route(other)))
        batch.append(Outgoing(self.frame(b"delayed"), Route(q), not_before))
        t.publish_many(batch)
        got = []
        for _ in range(10):
            d = self.must_receive(t, [q], "a message sent with publish_many")
            got.append(d.frame.body)
            d.ack()
        expected = [f"m{i}".encode() for i in range(10)]
        _expect(got == expected, f"publish_many order: received {got}, expected {expected}")
        d = self.must_receive(t, [other], "publish_many's message to a second queue")
        d.ack()
        d = self.must_receive(t, [q], "publish_many's delayed message")
        _expect(time.time() >= not_before.timestamp() - self.clock_tolerance,
                "publish_many's delayed message was delivered before its not_before")
        _expect(d.frame.body == b"delayed", f"expected the delayed message, got {d.frame.body!r}")
        d.ack()
        t.publish_many([])  # an empty batch is fine

    def check_large_and_binary_bodies(self) -> None:
        t = self.new()
        q = self.queue("bodies")
        bodies = [b"", bytes(range(256)) * 64, b"\x00\xff\r\n\x00",
                  os.urandom(self.large_body_size)]
        for body in bodies:
            t.publish(self.frame(body), Route(q))
        for body in bodies:
            d = self.must_receive(t, [q], f"a {len(body)}-byte body")
            got = d.frame.body
            _expect(isinstance(got, bytes), f"the body came back as {type(got).__name__}")
            if got != body:
                _fail(f"a {len(body)}-byte body came back as {len(got)} bytes, differing "
                      f"from byte {_first_difference(got, body)}")
            d.ack()

    def check_headers_properties_roundtrip(self) -> None:
        t = self.new()
        q = self.queue("headers")
        sent = Frame(
            body=b'{"x": 1}', content_type="application/x-wiretask; charset=utf-8",
            content_encoding="utf-8",
            headers={
                "id": uuid.uuid4().hex, "unicode": "héllo ✓ 日本 🙂", "none": None,
                "true": True, "false": False, "int": 42, "negative": -7, "big": 2**53 + 1,
                "float": 0.5, "empty_list": [], "empty_dict": {},
                "nested": {"list": [1, "two", None, [3, {"four": [5]}]], "dict": {"a": {}}},
                "timelimit": [None, 30], "argsrepr": "(1, 'x')",
            },
            properties={"correlation_id": "corr-1", "reply_to": "reply-q",
                        "delivery_mode": 2, "custom": {"k": ["v", 1, None]}},
        )
        t.publish(sent, Route(q))
        d = self.must_receive(t, [q], "a message with rich headers")
        got = d.frame
        _expect(got.content_type == sent.content_type,
                f"content_type came back as {got.content_type!r}")
        _expect(got.content_encoding == sent.content_encoding,
                f"content_encoding came back as {got.content_encoding!r}")
        for key, value in sent.headers.items():
            _expect(key in got.headers and got.headers[key] == value
                    and type(got.headers[key]) is type(value),
                    f"header {key!r} came back as {got.headers.get(key, '<missing>')!r}, "
                    f"sent {value!r}")
        for key, value in sent.properties.items():
            _expect(got.properties.get(key, "<missing>") == value,
                    f"property {key!r} came back as {got.properties.get(key, '<missing>')!r}, "
                    f"sent {value!r}")
        d.ack()

    def check_unacked_returns_on_close(self) -> None:
        first = self.new()
        q = self.queue("close")
        first.publish(self.frame(b"unfinished"), Route(q))
        self.must_receive(first, [q], "the message")
        first.close()
        second = self.new()
        d = self.must_receive(second, [q],
                              "a message left unacked by a closed transport")
        _expect(d.frame.body == b"unfinished", f"got {d.frame.body!r}")
        _expect(d.redelivered is True, "a message returned by close() is not redelivered")
        d.ack()

    def check_size_purge_peek(self) -> None:
        t = self.new()
        q = self.queue("inspect")
        later = datetime.now(UTC) + timedelta(minutes=10)
        ready = [f"r{i}".encode() for i in range(3)]
        t.publish_many([Outgoing(self.frame(body), Route(q)) for body in ready])
        native = t.capabilities.native_delay
        if native:
            t.publish_many([
                Outgoing(self.frame(b"s-late"), Route(q), later + timedelta(minutes=1)),
                Outgoing(self.frame(b"s-early"), Route(q), later),
            ])
        total = len(ready) + (2 if native else 0)
        _expect(t.size(q) == total, f"size() is {t.size(q)}, expected {total}")
        peeked = t.peek(q)
        states = [(p.frame.body, p.state) for p in peeked]
        expected = [(body, "ready") for body in ready]
        if native:
            expected += [(b"s-early", "scheduled"), (b"s-late", "scheduled")]
        _expect(states == expected,
                f"peek() gave {states}, expected {expected} (ready first, then by time)")
        if native:
            when = peeked[len(ready)].not_before
            _expect(when is not None and abs((when - later).total_seconds()) < 1,
                    f"a scheduled message peeks with not_before={when!r}, expected {later!r}")
        _expect(len(t.peek(q, limit=2)) == 2, "peek(limit=2) did not return 2 messages")
        _expect(t.size(q) == total, "peek() consumed messages")
        held = self.must_receive(t, [q], "a message")
        _expect(t.size(q) == total - 1,
                f"size() is {t.size(q)} with one message in flight; expected {total - 1}")
        purged = t.purge(q)
        _expect(purged == total - 1, f"purge() returned {purged}, expected {total - 1}")
        _expect(t.size(q) == 0, f"size() is {t.size(q)} after purge()")
        held.ack()  # an in-flight message survives purge and can still be settled
        self.must_be_empty(t, [q], "purge() must remove waiting messages")

    def check_concurrent_consumers(self) -> None:
        q = self.queue("concurrent")
        shared = self.new()
        transports = [shared, shared] + [self.new() for _ in range(max(self.consumers - 2, 0))]
        transports = transports[: self.consumers]
        counts: Counter[bytes] = Counter()
        redelivered: list[bytes] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        done = threading.Event()
        deadline = time.monotonic() + self.wait * 3

        def consume(transport: Transport) -> None:
            try:
                while not done.is_set() and time.monotonic() < deadline:
                    d = transport.receive([q], timeout=0.2)
                    if d is None:
                        continue
                    with lock:
                        counts[d.frame.body] += 1
                        if d.redelivered:
                            redelivered.append(d.frame.body)
                        if sum(counts.values()) >= self.messages:
                            done.set()
                    d.ack()
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                done.set()

        threads = [threading.Thread(target=consume, args=(t,), daemon=True)
                   for t in transports]
        for thread in threads:
            thread.start()
        producer = self.new()
        for i in range(self.messages):
            producer.publish(self.frame(f"c{i}".encode()), Route(q))
        done.wait(max(deadline - time.monotonic(), 0))
        done.set()
        for thread in threads:
            thread.join(self.wait)
        if errors:
            _fail(f"a consumer thread raised {errors[0]!r}")
        expected = {f"c{i}".encode() for i in range(self.messages)}
        twice = sorted(body.decode() for body, n in counts.items() if n > 1)
        missing = sorted(body.decode() for body in expected - set(counts))
        _expect(not twice, f"delivered more than once to {len(transports)} consumers: "
                f"{twice[:10]}")
        _expect(not missing, f"{len(missing)} of {self.messages} messages never arrived: "
                f"{missing[:10]}")
        _expect(not redelivered, f"messages acked in time came back redelivered: "
                f"{redelivered[:10]!r}")
        self.must_be_empty(producer, [q], "every message was consumed and acked")

    def check_process_consumers(self) -> None:
        assert self.process_factory is not None  # not_applicable() skips otherwise
        q = self.queue("processes")
        try:
            payload = pickle.dumps(self.process_factory)
        except Exception as exc:
            _fail(f"process_factory cannot be pickled: {exc!r}")
        workdir = Path(tempfile.mkdtemp(prefix="wiretask-conformance-"))
        stop = workdir / "stop"
        children = []
        lines: list[str] = []
        lock = threading.Lock()
        readers = []
        try:
            for _ in range(2):
                child = subprocess.Popen(
                    [sys.executable, "-c",
                     "from wiretask.testing import _consume_in_child; _consume_in_child()"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )
                assert child.stdin is not None
                child.stdin.write(pickle.dumps((payload, q, str(stop), self.wait * 3)))
                child.stdin.close()
                children.append(child)

                def read(proc: subprocess.Popen[bytes] = child) -> None:
                    assert proc.stdout is not None
                    for raw in proc.stdout:
                        with lock:
                            lines.append(raw.decode().strip())

                reader = threading.Thread(target=read, daemon=True)
                reader.start()
                readers.append(reader)
            producer = self.new()
            n = self.messages
            producer.publish_many(
                [Outgoing(self.frame(f"p{i}".encode()), Route(q)) for i in range(n)]
            )
            deadline = time.monotonic() + self.wait * 3
            while time.monotonic() < deadline:
                with lock:
                    got = sum(1 for line in lines if line.startswith("got "))
                if got >= n or any(c.poll() is not None for c in children):
                    break
                time.sleep(0.02)
            stop.touch()
            for child in children:
                try:
                    child.wait(timeout=self.wait)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            for reader in readers:
                reader.join(self.wait)
            for child in children:
                if child.returncode != 0:
                    assert child.stderr is not None
                    err = child.stderr.read().decode(errors="replace").strip()
                    _fail(f"a consumer process exited with {child.returncode}: "
                          f"{err.splitlines()[-1] if err else 'no output'}")
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                for stream in (child.stdout, child.stderr):
                    if stream is not None:
                        stream.close()
            stop.unlink(missing_ok=True)
            workdir.rmdir()
        counts = Counter(line.split(" ", 2)[2] for line in lines if line.startswith("got "))
        expected = {f"p{i}" for i in range(n)}
        twice = sorted(body for body, k in counts.items() if k > 1)
        missing = sorted(expected - set(counts))
        _expect(not twice, f"delivered more than once across processes: {twice[:10]}")
        _expect(not missing, f"{len(missing)} of {n} messages never reached a consumer "
                f"process: {missing[:10]}")
        self.must_be_empty(producer, [q], "every message was consumed by the processes")


def _first_difference(a: bytes, b: bytes) -> int:
    """Index of the first byte where ``a`` and ``b`` differ (compared in chunks: a
    byte-by-byte Python loop over several MiB takes seconds)."""
    chunk = 1 << 16
    for start in range(0, min(len(a), len(b)), chunk):
        x, y = a[start:start + chunk], b[start:start + chunk]
        if x == y:
            continue
        for offset, (p, q) in enumerate(zip(x, y, strict=False)):
            if p != q:
                return start + offset
    return min(len(a), len(b))


def _consume_in_child() -> None:
    """Entry point of a consumer process of the ``process_consumers`` check.

    Reads ``(pickled factory, queue, stop path, time limit)`` from stdin, consumes and
    acks until the stop file exists and the queue is empty, printing
    ``got <redelivered> <body>`` per message. Recoverable errors are retried, as a
    worker would.
    """
    payload, queue, stop, limit = pickle.loads(sys.stdin.buffer.read())
    factory = pickle.loads(payload)
    transport: Transport = factory()
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            try:
                delivery = transport.receive([queue], timeout=0.2)
            except TransportError as exc:
                if not exc.recoverable:
                    raise
                transport.connect()
                continue
            if delivery is None:
                if os.path.exists(stop):
                    return
                continue
            print(f"got {int(delivery.redelivered)} {delivery.frame.body.decode()}",
                  flush=True)
            while True:
                try:
                    delivery.ack()
                    break
                except TransportError as exc:
                    if not exc.recoverable:
                        raise
                    transport.connect()
    finally:
        transport.close()
