"""``check_transport``: the transport conformance kit (see ``wiretask.testing``)."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from wiretask.errors import ConnectionLost, TransportError, ValidationError, WiretaskError
from wiretask.protocol import states
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.results.base import DeferredStore, ResultBackend
from wiretask.testing._runner import (
    ConformanceReport,
    expect,
    fail,
    run_checks,
    select,
)
from wiretask.transports.base import (
    BoundQueue,
    Broadcast,
    BrokerDelay,
    Delivery,
    Exchange,
    FusedSettlement,
    Inbox,
    Inspection,
    QueueStatistics,
    QueueStats,
    Transport,
)

__all__ = ["CHECKS", "check_transport", "closed_port"]

log = logging.getLogger(__name__)

#: Every check of ``check_transport``, in the order they run.
CHECKS: tuple[str, ...] = (
    "publish_receive_ack",
    "argument_validation",
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
    "receive_many",
    "ack_many",
    "ack_and_receive",
    "large_and_binary_bodies",
    "headers_properties_roundtrip",
    "unacked_returns_on_close",
    "size_purge_peek",
    "queue_stats",
    "broker_delay",
    "broadcast",
    "fused_settlement",
    "error_translation",
    "concurrent_consumers",
    "process_consumers",
)


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now): where a
    ``broken_factory`` can point a transport or backend."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def check_transport(
    factory: Callable[[], Transport],
    *,
    process_factory: Callable[[], Transport] | None = None,
    broken_factory: Callable[[str], Transport] | None = None,
    fused_backend: ResultBackend | None = None,
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
    other_movers: bool = False,
) -> ConformanceReport:
    """Run the transport conformance checks against transports made by ``factory``.

    Args:
        factory: returns a new (connected or connectable) transport; all of them must
            share one broker namespace (see the module docs).
        process_factory: a picklable factory for the multi-process check; without it
            that check is skipped.
        broken_factory: called with a password, returns a transport that cannot reach
            its broker (e.g. at ``closed_port()``) and whose URL carries that password;
            the error-translation check uses it. Without it that check is skipped.
        fused_backend: for a transport that offers ``FusedSettlement``: a result backend
            (with ``DeferredStore``) whose results it stores; without it that check is
            skipped.
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
        other_movers: something else moves due messages on the same broker while
            the checks run (a scheduler process beside the worker, as Redis's
            default delay mode has): ``broker_delay`` then accepts a ``due()`` that
            found a due message already moved (returned 0), as long as the
            message is delivered.

    Returns:
        The report: checks passed, skipped (with reasons).

    Raises:
        ConformanceError: a check failed (an ``AssertionError``).
        ValueError: an unknown check name in ``skip`` or ``only``.
    """
    skipping, selected = select(CHECKS, skip, only)
    probe = factory()
    kit = _Kit(
        factory, probe, process_factory=process_factory, broken_factory=broken_factory,
        fused_backend=fused_backend, delay=delay, wait=wait,
        large_body_size=large_body_size, messages=messages, consumers=consumers,
        clock_tolerance=clock_tolerance, other_movers=other_movers,
    )
    try:
        probe.close()
    except TransportError:
        pass
    return run_checks(kit, probe.url, CHECKS, skip=skipping, selected=selected,
                      fail_fast=fail_fast, check_timeout=check_timeout)


class _Kit:
    """The checks. Each ``check_<name>`` method opens transports through ``self.new()``
    and queues through ``self.queue()``; ``cleanup`` closes and purges them afterwards."""

    def __init__(
        self, factory: Callable[[], Transport], probe: Transport, *,
        process_factory: Callable[[], Transport] | None,
        broken_factory: Callable[[str], Transport] | None,
        fused_backend: ResultBackend | None, delay: float, wait: float,
        large_body_size: int, messages: int, consumers: int, clock_tolerance: float,
        other_movers: bool = False,
    ) -> None:
        self.factory = factory
        self.probe = probe
        self.process_factory = process_factory
        self.broken_factory = broken_factory
        self.fused_backend = fused_backend
        self.delay = delay
        self.wait = wait
        self.large_body_size = large_body_size
        self.messages = messages
        self.consumers = consumers
        self.clock_tolerance = clock_tolerance
        self.other_movers = other_movers
        self.run_id = uuid.uuid4().hex[:10]
        self._opened: list[Transport] = []
        self._queues: list[str] = []
        self._lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------

    def not_applicable(self, name: str) -> str | None:
        probe = self.probe
        caps = probe.capabilities
        if name == "priority_order" and not caps.priorities:
            return "the transport does not support priorities (capabilities.priorities)"
        if name == "size_purge_peek" and not isinstance(probe, Inspection):
            return "the transport does not offer Inspection (size, purge, peek, dead_letters)"
        if name == "queue_stats" and not isinstance(probe, QueueStatistics):
            return "the transport does not offer QueueStatistics (queue_stats)"
        if name == "broker_delay" and not isinstance(probe, BrokerDelay):
            return "the transport does not offer BrokerDelay (no due() to call)"
        if name == "broadcast" and not isinstance(probe, Broadcast):
            return "the transport does not offer Broadcast (broadcast, listen)"
        if name == "fused_settlement":
            if not isinstance(probe, FusedSettlement):
                return "the transport does not offer FusedSettlement"
            if self.fused_backend is None:
                return "the transport offers FusedSettlement, but no fused_backend was given"
        if name == "error_translation" and self.broken_factory is None:
            return ("no broken_factory given (a factory of a transport that cannot reach "
                    "its broker)")
        if name == "process_consumers":
            if not caps.multi_process:
                return "the transport is in-process only (capabilities.multi_process)"
            if self.process_factory is None:
                return "no process_factory given (a picklable factory is needed)"
        return None

    def check(self, name: str) -> Callable[[], None]:
        check: Callable[[], None] = getattr(self, f"check_{name}")
        return check

    def cleanup(self, *, hung: bool) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
            queues, self._queues = self._queues, []
        if hung:
            # The hung check's transports are left alone: closing them under a hung
            # operation could hang us too.
            return
        try:
            cleaner = self.factory()
            opened.append(cleaner)
            for queue in queues:
                self._empty(cleaner, queue)
        except Exception:  # best effort: leftovers in unique queues harm nobody
            log.debug("conformance: emptying the check's queues failed", exc_info=True)
        for transport in opened:
            try:
                transport.close()
            except Exception:
                log.debug("conformance: closing a transport failed", exc_info=True)

    @staticmethod
    def _empty(transport: Transport, queue: str) -> None:
        if isinstance(transport, Inspection):
            transport.purge(queue)
            return
        # Without Inspection: take what is ready (bounded); scheduled messages stay.
        for _ in range(10_000):
            delivery = transport.receive([queue], timeout=0)
            if delivery is None:
                return
            delivery.reject()

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
            fail(f"{what} was not received within {self.wait:g} s")
        return delivery

    def must_be_empty(self, transport: Transport, queues: list[str], why: str) -> None:
        delivery = transport.receive(queues, timeout=0.2)
        if delivery is not None:
            body = delivery.frame.body[:40]
            delivery.reject(requeue=True)
            fail(f"{why}, but receive returned a message (body {body!r})")

    @staticmethod
    def expect_size(transport: Transport, queue: str, expected: int, when: str) -> None:
        """``size(queue) == expected``, if the transport offers Inspection."""
        if isinstance(transport, Inspection):
            got = transport.size(queue)
            expect(got == expected, f"size() is {got} {when}; expected {expected}")

    def wait_visible(self, transport: Transport, queue: str, count: int) -> bool:
        """Wait until ``count`` messages wait in ``queue``, so that what follows sees
        the broker's order, not timing. Returns whether that could be told (a transport
        without Inspection is given a moment instead)."""
        if not isinstance(transport, Inspection):
            time.sleep(min(0.2, self.wait))
            return False
        deadline = time.monotonic() + self.wait
        while transport.size(queue) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return True

    def take(self, transport: Transport, queue: str, count: int, what: str) -> list[Delivery]:
        """``count`` deliveries of ``queue``, taken with ``receive_many``."""
        taken: list[Delivery] = []
        deadline = time.monotonic() + self.wait
        while len(taken) < count and time.monotonic() < deadline:
            taken += transport.receive_many([queue], limit=count - len(taken), timeout=0.2)
        if len(taken) < count:
            fail(f"only {len(taken)} of {count} {what} were received within {self.wait:g} s")
        return taken

    # -- the checks ---------------------------------------------------------------------

    def check_publish_receive_ack(self) -> None:
        t = self.new()
        q = self.queue("basic")
        sent = self.frame(b"hello")
        t.declare_queue(q)
        t.publish(sent, Route(q))
        d = self.must_receive(t, [q], "a published message")
        expect(d.frame == sent, f"received {d.frame!r}, sent {sent!r}")
        expect(d.queue == q, f"delivery.queue is {d.queue!r}, expected {q!r}")
        expect(d.redelivered is False, "a first delivery is marked redelivered")
        d.ack()
        self.must_be_empty(t, [q], "an acked message must be gone")
        self.expect_size(t, q, 0, "after the only message was acked")

    def check_receive_timeout(self) -> None:
        t = self.new()
        q = self.queue("empty")
        started = time.monotonic()
        got = t.receive([q], timeout=0.3)
        expect(got is None, "receive on an empty queue returned a message")
        # A bound against hanging, not a speed requirement.
        expect(time.monotonic() - started < 0.3 + self.wait,
                "receive(timeout=0.3) on an empty queue blocked far longer than asked")
        expect(t.receive([q], timeout=0) is None, "receive(timeout=0) returned a message")

    def check_reject_requeue(self) -> None:
        t = self.new()
        q = self.queue("requeue")
        t.publish(self.frame(b"again"), Route(q))
        first = self.must_receive(t, [q], "the message")
        first.reject(requeue=True)
        second = self.must_receive(t, [q], "a message rejected with requeue=True")
        expect(second.frame.body == b"again", f"requeued body came back as {second.frame.body!r}")
        expect(second.redelivered is True, "a requeued message is not marked redelivered")
        second.ack()

    def check_reject_drop(self) -> None:
        t = self.new()
        q = self.queue("drop")
        t.publish(self.frame(b"drop me"), Route(q))
        self.must_receive(t, [q], "the message").reject()
        self.must_be_empty(t, [q], "reject() without requeue must drop the message")
        self.expect_size(t, q, 0, "after the message was rejected")

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
                fail(f"{second} after {first} did not raise TransportError")
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
            expect(at >= not_before.timestamp() - self.clock_tolerance,
                    f"a message with not_before was delivered {not_before.timestamp() - at:.3f}"
                    " s early")
        d = self.must_receive(t, [q], "a delayed message after its not_before")
        at = time.time()
        expect(at >= not_before.timestamp() - self.clock_tolerance,
                f"a delayed message was delivered {not_before.timestamp() - at:.3f} s early")
        expect(d.frame.body == b"later", f"delayed body came back as {d.frame.body!r}")
        d.ack()

    def check_priority_order(self) -> None:
        t = self.new()
        caps = t.capabilities
        q = self.queue("priority")
        top = caps.max_priority
        sent = [(b"low-1", 0), (b"high-1", top), (b"low-2", 0), (b"high-2", top)]
        t.publish_many([Outgoing(self.frame(body, priority=p), Route(q)) for body, p in sent])
        # Wait until all four are visible, so that the order is the broker's, not timing.
        self.wait_visible(t, q, len(sent))
        if caps.priority_order == "higher-first":
            expected = [b"high-1", b"high-2", b"low-1", b"low-2"]
        else:
            expected = [b"low-1", b"low-2", b"high-1", b"high-2"]
        got = []
        for _ in sent:
            d = self.must_receive(t, [q], "a prioritised message")
            got.append(d.frame.body)
            d.ack()
        expect(got == expected,
                f"priority_order={caps.priority_order!r} with priorities 0 and {top}: "
                f"received {got}, expected {expected} (FIFO within a priority)")

    def check_expiration_property(self) -> None:
        t = self.new()
        q = self.queue("expiration")
        t.publish(self.frame(b"ttl", expiration="60000"), Route(q))
        d = self.must_receive(t, [q], "a message with an expiration property")
        got = d.frame.properties.get("expiration")
        expect(got == "60000", f"the expiration property came back as {got!r}, not '60000'")
        d.ack()
        if t.capabilities.per_message_ttl:
            t.publish(self.frame(b"expires", expiration="50"), Route(q))
            time.sleep(0.5)
            t.publish(self.frame(b"fresh"), Route(q))
            d = self.must_receive(t, [q], "a message published after an expired one")
            expect(d.frame.body == b"fresh",
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
        if not isinstance(t, Inspection):
            return  # no way to read dead letters back
        letters = t.dead_letters(q)
        expect(len(letters) == 1, f"dead_letters() returned {len(letters)} entries, not 1")
        [letter] = letters
        expect(letter.reason == "conformance: cannot decode",
                f"dead letter reason is {letter.reason!r}")
        expect(letter.queue == q, f"dead letter queue is {letter.queue!r}, not {q!r}")
        expect(letter.frame is not None and letter.frame.body == sent.body
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
        expect(got == {b"from-a": a, b"from-b": b},
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
        expect(got == expected, f"publish_many order: received {got}, expected {expected}")
        d = self.must_receive(t, [other], "publish_many's message to a second queue")
        d.ack()
        d = self.must_receive(t, [q], "publish_many's delayed message")
        expect(time.time() >= not_before.timestamp() - self.clock_tolerance,
                "publish_many's delayed message was delivered before its not_before")
        expect(d.frame.body == b"delayed", f"expected the delayed message, got {d.frame.body!r}")
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
            expect(isinstance(got, bytes), f"the body came back as {type(got).__name__}")
            if got != body:
                fail(f"a {len(body)}-byte body came back as {len(got)} bytes, differing "
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
        expect(got.content_type == sent.content_type,
                f"content_type came back as {got.content_type!r}")
        expect(got.content_encoding == sent.content_encoding,
                f"content_encoding came back as {got.content_encoding!r}")
        for key, value in sent.headers.items():
            expect(key in got.headers and got.headers[key] == value
                    and type(got.headers[key]) is type(value),
                    f"header {key!r} came back as {got.headers.get(key, '<missing>')!r}, "
                    f"sent {value!r}")
        for key, value in sent.properties.items():
            expect(got.properties.get(key, "<missing>") == value,
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
        expect(d.frame.body == b"unfinished", f"got {d.frame.body!r}")
        expect(d.redelivered is True, "a message returned by close() is not redelivered")
        d.ack()

    def check_size_purge_peek(self) -> None:
        t = self.new()
        assert isinstance(t, Inspection)  # not_applicable() skips otherwise
        q = self.queue("inspect")
        refused: list[tuple[str, Callable[[], object]]] = [
            ("size('')", lambda: t.size("")),
            ("purge('')", lambda: t.purge("")),
            ("peek('')", lambda: t.peek("")),
            ("dead_letters('')", lambda: t.dead_letters("")),
            ("peek(limit=-1)", lambda: t.peek(q, limit=-1)),
        ]
        for what, call in refused:
            try:
                call()
            except ValidationError:
                continue
            fail(f"{what} did not raise ValidationError")
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
        expect(t.size(q) == total, f"size() is {t.size(q)}, expected {total}")
        peeked = t.peek(q)
        seen = [(p.frame.body, p.state) for p in peeked]
        expected = [(body, "ready") for body in ready]
        if native:
            expected += [(b"s-early", "scheduled"), (b"s-late", "scheduled")]
        expect(seen == expected,
                f"peek() gave {seen}, expected {expected} (ready first, then by time)")
        if native:
            when = peeked[len(ready)].not_before
            expect(when is not None and abs((when - later).total_seconds()) < 1,
                    f"a scheduled message peeks with not_before={when!r}, expected {later!r}")
        expect(len(t.peek(q, limit=2)) == 2, "peek(limit=2) did not return 2 messages")
        expect(t.size(q) == total, "peek() consumed messages")
        held = self.must_receive(t, [q], "a message")
        expect(t.size(q) == total - 1,
                f"size() is {t.size(q)} with one message in flight; expected {total - 1}")
        purged = t.purge(q)
        expect(purged == total - 1, f"purge() returned {purged}, expected {total - 1}")
        expect(t.size(q) == 0, f"size() is {t.size(q)} after purge()")
        held.ack()  # an in-flight message survives purge and can still be settled
        self.must_be_empty(t, [q], "purge() must remove waiting messages")

    def check_queue_stats(self) -> None:
        t = self.new()
        assert isinstance(t, QueueStatistics)  # not_applicable() skips otherwise
        q = self.queue("stats")
        for what, bad in (("queue_stats('q')", q), ("queue_stats([''])", [""])):
            try:
                t.queue_stats(cast(Any, bad))
            except ValidationError:
                continue
            fail(f"{what} did not raise ValidationError")

        def read(when: str) -> QueueStats:
            found = t.queue_stats([q])
            expect(len(found) == 1 and isinstance(found[0], QueueStats)
                   and found[0].queue == q,
                   f"queue_stats([{q!r}]) gave {found!r} {when}")
            return found[0]

        def numbers(stats: QueueStats, **expected: int) -> None:
            # A number the broker cannot tell is None; one it tells must be exact.
            for field, value in expected.items():
                got = getattr(stats, field)
                expect(got is None or got == value,
                       f"queue_stats: {field} is {got!r} {when}; expected {value}")

        when = "for a queue nobody used"
        empty = read(when)
        numbers(empty, ready=0, scheduled=0, in_flight=0, dead=0, published=0,
                delivered=0, acked=0, dead_lettered=0)
        expect(empty.oldest_ready_at is None and empty.next_due is None,
               f"an unused queue has oldest_ready_at={empty.oldest_ready_at!r}, "
               f"next_due={empty.next_due!r}")
        before = time.time()
        t.publish_many([Outgoing(self.frame(f"r{i}".encode()), Route(q)) for i in range(4)])
        after = time.time()
        native = t.capabilities.native_delay
        later = datetime.now(UTC) + timedelta(minutes=10)
        if native:
            t.publish_many([
                Outgoing(self.frame(b"s-late"), Route(q), later + timedelta(minutes=1)),
                Outgoing(self.frame(b"s-early"), Route(q), later),
            ])
        scheduled = 2 if native else 0
        self.wait_visible(t, q, 4 + scheduled)
        dead, held = self.take(t, q, 2, "messages")
        dead.dead_letter("queue_stats check")
        when = "with 2 ready, 1 in flight and 1 dead letter"
        stats = read(when)
        numbers(stats, ready=2, scheduled=scheduled, in_flight=1, dead=1,
                published=4 + scheduled, delivered=2, acked=0, dead_lettered=1)
        if native and stats.scheduled is not None:
            expect(stats.next_due is not None
                   and abs(stats.next_due - later.timestamp()) < 0.01,
                   f"next_due is {stats.next_due!r}; expected {later.timestamp()}")
        if stats.oldest_ready_at is not None:
            expect(before - self.clock_tolerance <= stats.oldest_ready_at
                   <= after + self.clock_tolerance,
                   f"oldest_ready_at is {stats.oldest_ready_at!r}; the ready messages "
                   f"were published between {before} and {after}")
        if isinstance(t, Inspection) and stats.waiting is not None:
            expect(stats.waiting == t.size(q),
                   f"ready + scheduled is {stats.waiting}, size() is {t.size(q)}")
        held.ack()
        when = "after the held message was acked"
        numbers(read(when), ready=2, in_flight=0, acked=1)

    def check_argument_validation(self) -> None:
        t = self.new()
        q = self.queue("validation")
        naive = datetime.now() + timedelta(minutes=1)  # naive on purpose
        top = t.capabilities.max_priority
        bad: list[tuple[str, Callable[[], object]]] = [
            # Wrong types on purpose: what an untyped caller may pass.
            ("publish(a non-Frame)", lambda: t.publish(cast(Any, b"body"), Route(q))),
            ("publish(a non-Route)", lambda: t.publish(self.frame(b"x"), cast(Any, q))),
            ("publish to an empty queue name", lambda: t.publish(self.frame(b"x"), Route(""))),
            ("publish with a naive not_before",
             lambda: t.publish(self.frame(b"x"), Route(q), not_before=naive)),
            ("publish with priority '5'", lambda: t.publish(self.frame(b"x", priority="5"),
                                                            Route(q))),
            ("publish with priority True", lambda: t.publish(self.frame(b"x", priority=True),
                                                             Route(q))),
            ("publish_many with one bad entry", lambda: t.publish_many([
                Outgoing(self.frame(b"fine"), Route(q)),
                Outgoing(self.frame(b"x"), Route(q), naive),
            ])),
            ("declare_queue('')", lambda: t.declare_queue("")),
            ("receive([])", lambda: t.receive([], timeout=0)),
            ("receive(timeout=-1)", lambda: t.receive([q], timeout=-1)),
            ("receive(timeout=nan)", lambda: t.receive([q], timeout=float("nan"))),
            ("receive_many(limit=0)", lambda: t.receive_many([q], limit=0, timeout=0)),
            ("ack_many([a non-Delivery])", lambda: t.ack_many([cast(Any, "tag")])),
            ("ack_and_receive(limit=0)", lambda: t.ack_and_receive([], [q], limit=0)),
        ]
        if t.capabilities.out_of_range_priority == "refuse":
            bad.append((f"publish with priority {top + 1}",
                        lambda: t.publish(self.frame(b"x", priority=top + 1), Route(q))))
        for what, call in bad:
            try:
                call()
            except ValidationError:
                continue
            except Exception as exc:
                fail(f"{what} raised {type(exc).__name__}: {exc}, not ValidationError")
            fail(f"{what} was accepted; it must raise ValidationError")
        self.must_be_empty(t, [q], "nothing refused may be sent (publish_many included)")
        t.publish(self.frame(b"top", priority=top), Route(q))
        d = self.must_receive(t, [q], f"a message with priority {top} (max_priority)")
        try:
            d.dead_letter("")
        except ValidationError:
            pass
        else:
            fail("dead_letter('') was accepted; it must raise ValidationError")
        d.ack()  # the refused dead_letter settled nothing

    def check_receive_many(self) -> None:
        t = self.new()
        q = self.queue("many")
        bodies = [f"m{i}".encode() for i in range(5)]
        t.publish_many([Outgoing(self.frame(body), Route(q)) for body in bodies])
        exact = self.wait_visible(t, q, len(bodies))
        got: list[Delivery] = []
        first = t.receive_many([q], limit=3, timeout=self.wait)
        expect(1 <= len(first) <= 3,
               f"receive_many(limit=3) with 5 waiting returned {len(first)} messages")
        if exact:
            expect(len(first) == 3, f"receive_many(limit=3) with 5 messages waiting returned "
                   f"{len(first)}; it returns what 3 consecutive receive calls would")
        got += first
        deadline = time.monotonic() + self.wait
        while len(got) < len(bodies) and time.monotonic() < deadline:
            more = t.receive_many([q], limit=5, timeout=0.2)
            expect(len(more) <= 5, f"receive_many(limit=5) returned {len(more)} messages")
            got += more
        order = [d.frame.body for d in got]
        expect(order == bodies, f"receive_many gave {order}, expected {bodies} (FIFO, as "
               "consecutive receive calls)")
        expect(all(d.queue == q for d in got), "a delivery of receive_many names another queue")
        for d in got:
            d.ack()
        # On an empty queue: an empty list after about the timeout.
        started = time.monotonic()
        empty = t.receive_many([q], limit=3, timeout=0.3)
        expect(list(empty) == [], f"receive_many on an empty queue returned {len(empty)}")
        expect(time.monotonic() - started < 0.3 + self.wait,
               "receive_many(timeout=0.3) on an empty queue blocked far longer than asked")
        # The timeout is for the first message only: one arriving later is returned at
        # once, without waiting for the rest of the limit.
        later = min(0.2, self.wait / 4)
        producer = self.new()
        timer = threading.Timer(later, lambda: producer.publish(self.frame(b"late"), Route(q)))
        timer.start()
        try:
            started = time.monotonic()
            arrived = t.receive_many([q], limit=5, timeout=self.wait)
            took = time.monotonic() - started
        finally:
            timer.join(self.wait)
        expect([d.frame.body for d in arrived] == [b"late"],
               f"receive_many while one message arrives returned "
               f"{[d.frame.body for d in arrived]}")
        expect(took < later + self.wait / 2,
               f"receive_many(limit=5, timeout={self.wait:g}) took {took:.2f} s to return the "
               "one message that arrived: it must wait for the first only")
        for d in arrived:
            d.ack()

    def check_ack_many(self) -> None:
        t = self.new()
        q = self.queue("ack-many")
        t.publish_many([Outgoing(self.frame(f"a{i}".encode()), Route(q)) for i in range(4)])
        taken = self.take(t, q, 4, "messages")
        t.ack_many(taken[:3])
        for d in taken[:3]:
            try:
                d.ack()
            except TransportError:
                continue
            fail("ack() after ack_many did not raise TransportError")
        # One settled already (first in the batch): the others are still acknowledged,
        # then it raises.
        try:
            t.ack_many([taken[0], taken[3]])
        except TransportError:
            pass
        else:
            fail("ack_many with a delivery acked already did not raise TransportError")
        try:
            taken[3].ack()
        except TransportError:
            pass
        else:
            fail("ack_many with one settled delivery did not ack the other one")
        t.ack_many([])
        self.must_be_empty(t, [q], "every message was acked by ack_many")
        self.expect_size(t, q, 0, "after ack_many")

    def check_ack_and_receive(self) -> None:
        t = self.new()
        q = self.queue("ack-receive")
        bodies = [f"r{i}".encode() for i in range(4)]
        t.publish_many([Outgoing(self.frame(body), Route(q)) for body in bodies])
        first = self.take(t, q, 2, "messages")
        # Where the kit cannot tell that the two are waiting (no Inspection: a push
        # broker may not have handed them to this consumer yet), a call that never
        # waits may take none of them; the order check below still holds.
        told = self.wait_visible(t, q, 2)
        second = t.ack_and_receive(first, [q], limit=5)
        expect((1 if told else 0) <= len(second) <= 2,
               f"ack_and_receive(limit=5) with 2 waiting returned {len(second)} messages")
        second = [*second, *self.take(t, q, 2 - len(second), "messages")]
        order = [d.frame.body for d in [*first, *second]]
        expect(order == bodies, f"ack_and_receive gave {order}, expected {bodies}")
        for d in first:
            try:
                d.ack()
            except TransportError:
                continue
            fail("ack() after ack_and_receive did not raise TransportError")
        started = time.monotonic()
        third = t.ack_and_receive(second, [q], limit=3)
        took = time.monotonic() - started
        expect(list(third) == [], f"ack_and_receive on an empty queue returned {len(third)}")
        expect(took < self.wait / 2, f"ack_and_receive took {took:.2f} s; it never waits")
        # A failed acknowledgement raises and takes nothing.
        t.publish(self.frame(b"stays"), Route(q))
        self.wait_visible(t, q, 1)
        try:
            t.ack_and_receive([second[0]], [q], limit=1)
        except TransportError:
            pass
        else:
            fail("ack_and_receive with a delivery acked already did not raise TransportError")
        d = self.must_receive(t, [q], "the message a failed ack_and_receive must not take")
        expect(d.frame.body == b"stays", f"got {d.frame.body!r}")
        d.ack()

    def check_broker_delay(self) -> None:
        t = self.new()
        assert isinstance(t, BrokerDelay)  # not_applicable() skips otherwise
        q = self.queue("due")
        moved = t.due()
        expect(isinstance(moved, int) and not isinstance(moved, bool) and moved >= 0,
               f"due() returned {moved!r}, not an int >= 0")
        # Without native_delay the broker holds nothing (the worker holds early
        # messages): due() must then move nothing a consumer needs to wait for.
        native = t.capabilities.native_delay
        if native:
            far = datetime.now(UTC) + timedelta(minutes=10)
            t.publish(self.frame(b"far"), Route(q), not_before=far)
        not_before = datetime.now(UTC) + timedelta(seconds=self.delay)
        t.publish(self.frame(b"soon"), Route(q), not_before=not_before)
        time.sleep(max(not_before.timestamp() - time.time(), 0) + self.clock_tolerance)
        moved = t.due()
        if native and not self.other_movers:
            expect(moved >= 1, f"due() after a delayed message's time returned {moved}, "
                   "expected it to move that message")
        if native and isinstance(t, Inspection):
            seen = [(p.frame.body, p.state) for p in t.peek(q)]
            expect(seen == [(b"soon", "ready"), (b"far", "scheduled")],
                   f"after due() peek() gave {seen}: the due message must be ready, "
                   "the other still scheduled")
        d = self.must_receive(t, [q], "a delayed message moved by due()")
        expect(d.frame.body == b"soon", f"expected the due message, got {d.frame.body!r}")
        d.ack()
        if native:
            expect(t.receive([q], timeout=0) is None,
                   "a message ten minutes from its not_before was delivered")

    def check_broadcast(self) -> None:
        """Exchanges route as AMQP's do, to the queues bound when a message is sent:
        fanout to all, direct by the exact key; a queue bound later sees only later
        messages; frames arrive whole and in order; a closed inbox refuses."""
        sender, first, second = self.new(), self.new(), self.new()
        assert isinstance(sender, Broadcast)  # not_applicable() skips otherwise
        assert isinstance(first, Broadcast)
        assert isinstance(second, Broadcast)
        fanout = Exchange(name=f"wiretask-conformance-{self.run_id}.pidbox", type="fanout")
        direct = Exchange(name=f"reply.wiretask-conformance-{self.run_id}.pidbox",
                          type="direct")
        inboxes: list[Inbox] = []
        try:
            a = first.listen(fanout, BoundQueue(name=self.queue("fan-a"), expires=60))
            b = second.listen(fanout, BoundQueue(name=self.queue("fan-b"), expires=60))
            mine = first.listen(direct, BoundQueue(name=self.queue("reply-1"),
                                                   binding_key="k1", expires=60))
            other = second.listen(direct, BoundQueue(name=self.queue("reply-2"),
                                                     binding_key="k2", expires=60))
            inboxes += [a, b, mine, other]
            sent = Frame(body=b'{"method": "ping"}', content_type="application/json",
                         content_encoding="utf-8", headers={"clock": 3, "expires": 1.5},
                         properties={"delivery_mode": 2, "priority": 0})
            sender.broadcast(fanout, sent)
            late = second.listen(fanout, BoundQueue(name=self.queue("fan-late"), expires=60))
            inboxes.append(late)
            sender.broadcast(fanout, self.frame(b"second"))
            sender.broadcast(direct, self.frame(b"for k1"), routing_key="k1")
            sender.broadcast(direct, self.frame(b"for nobody"), routing_key="k3")
            for name, inbox in (("a", a), ("b", b)):
                got = [inbox.get(self.wait), inbox.get(self.wait)]
                expect(got[0] == sent, f"fanout queue {name} got {got[0]!r}, not {sent!r}")
                expect(got[1] is not None and got[1].body == b"second",
                       f"fanout queue {name} got {got[1]!r} second, not b'second'")
            seen = late.get(self.wait)
            expect(seen is not None and seen.body == b"second",
                   f"a queue bound after the first message got {seen!r} first, not the "
                   "second message (it must not see what was sent before it listened)")
            reply = mine.get(self.wait)
            expect(reply is not None and reply.body == b"for k1",
                   f"the direct queue bound with k1 got {reply!r}")
            quiet = [inbox.get(0.2) for inbox in (a, b, late, mine, other)]
            expect(quiet == [None] * 5, f"unexpected extra messages: {quiet!r}")
            mine.close()
            try:
                mine.get(0)
            except TransportError:
                pass
            else:
                fail("get() on a closed inbox did not raise TransportError")
        finally:
            for inbox in inboxes:
                inbox.close()

    def check_fused_settlement(self) -> None:
        t = self.new()
        backend = self.fused_backend
        # not_applicable() skips otherwise:
        assert isinstance(t, FusedSettlement)
        assert backend is not None
        if not isinstance(backend, DeferredStore):
            fail(f"fused_backend {backend!r} does not offer DeferredStore (pending, "
                 "store_pending), which the fused path needs")
        expect(t.stores_results_of(backend),
               f"stores_results_of(fused_backend) is False for {backend!r}")
        expect(not t.stores_results_of(object()), "stores_results_of(object()) is True")
        q = self.queue("fused")
        sent = [self.frame(f"f{i}".encode()) for i in range(4)]
        ids = [str(frame.task_id) for frame in sent]
        t.publish_many([Outgoing(frame, Route(q)) for frame in sent])
        try:
            a, b = self.take(t, q, 2, "messages")
            self.wait_visible(t, q, 2)
            earlier = states.make_meta(ids[1], states.SUCCESS, "stored before")
            backend.store(ids[1], earlier)
            results = [
                (a, backend.pending(ids[0], states.make_meta(ids[0], states.SUCCESS, 0))),
                (b, backend.pending(ids[1], states.make_meta(ids[1], states.SUCCESS, 1))),
            ]
            taken, skipped = t.store_ack_and_receive(results, [], [q], limit=1)
            expect(list(skipped) == [1], f"store_ack_and_receive reported {skipped} as not "
                   "written, expected [1] (that task had a final state already)")
            stored = backend.get(ids[0])
            expect(stored is not None and stored["status"] == states.SUCCESS
                   and stored["result"] == 0,
                   f"the result written with its ack reads back as {stored!r}")
            expect(backend.get(ids[1]) == earlier,
                   "a result not written (state stored already) replaced the stored one")
            try:
                a.ack()
            except TransportError:
                pass
            else:
                fail("a delivery whose result was written with its ack was not acked")
            b.ack()  # not written, so left unsettled for the caller
            expect([d.frame.body for d in taken] == [b"f2"],
                   f"store_ack_and_receive(limit=1) took {[d.frame.body for d in taken]}")
            none, nothing = t.store_ack_and_receive([], list(taken), [q], limit=0)
            expect(list(none) == [] and list(nothing) == [],
                   "store_ack_and_receive(limit=0) took messages")
            last = self.must_receive(t, [q], "the fourth message")
            last.ack()
            self.must_be_empty(t, [q], "every message was settled through the fused path")
        finally:
            for task_id in ids:
                backend.forget(task_id)

    def check_error_translation(self) -> None:
        assert self.broken_factory is not None  # not_applicable() skips otherwise
        secret = f"wiretask-secret-{uuid.uuid4().hex}"
        t = self.broken_factory(secret)
        with self._lock:
            self._opened.append(t)
        expect(secret not in t.url, f"the transport's url shows its password: {t.url!r}")
        q = self.queue("unreachable")
        calls: list[tuple[str, Callable[[], object]]] = [
            ("connect()", t.connect),
            ("publish()", lambda: t.publish(self.frame(b"x"), Route(q))),
            ("receive()", lambda: t.receive([q], timeout=0)),
            ("receive_many()", lambda: t.receive_many([q], limit=2, timeout=0)),
        ]
        if isinstance(t, Inspection):
            calls.append(("size()", lambda: t.size(q)))
        if isinstance(t, BrokerDelay):
            calls.append(("due()", t.due))
        for what, call in calls:
            try:
                call()
            except ConnectionLost as exc:
                problem = _translation_problem(exc, secret)
                if problem:
                    fail(f"{what} on an unreachable broker: {problem}")
                continue
            except WiretaskError as exc:
                fail(f"{what} on an unreachable broker raised {type(exc).__name__}: {exc}; "
                     "expected ConnectionLost (recoverable)")
            except Exception as exc:
                fail(f"{what} on an unreachable broker let a driver error escape: "
                     f"{type(exc).__name__}: {exc}")
            fail(f"{what} on an unreachable broker did not raise")
        try:
            t.close()
        except Exception as exc:
            fail(f"close() of a transport whose broker is unreachable raised {exc!r}")

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
            fail(f"a consumer thread raised {errors[0]!r}")
        expected = {f"c{i}".encode() for i in range(self.messages)}
        twice = sorted(body.decode() for body, n in counts.items() if n > 1)
        missing = sorted(body.decode() for body in expected - set(counts))
        expect(not twice, f"delivered more than once to {len(transports)} consumers: "
                f"{twice[:10]}")
        expect(not missing, f"{len(missing)} of {self.messages} messages never arrived: "
                f"{missing[:10]}")
        expect(not redelivered, f"messages acked in time came back redelivered: "
                f"{redelivered[:10]!r}")
        self.must_be_empty(producer, [q], "every message was consumed and acked")

    def check_process_consumers(self) -> None:
        assert self.process_factory is not None  # not_applicable() skips otherwise
        q = self.queue("processes")
        try:
            payload = pickle.dumps(self.process_factory)
        except Exception as exc:
            fail(f"process_factory cannot be pickled: {exc!r}")
        workdir = Path(tempfile.mkdtemp(prefix="wiretask-conformance-"))
        stop = workdir / "stop"
        children = []
        lines: list[str] = []
        lock = threading.Lock()
        readers = []
        try:
            for _ in range(2):
                child = subprocess.Popen(
                    [sys.executable, "-c", "from wiretask.testing._transport import "
                     "_consume_in_child; _consume_in_child()"],
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
                    fail(f"a consumer process exited with {child.returncode}: "
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
        expect(not twice, f"delivered more than once across processes: {twice[:10]}")
        expect(not missing, f"{len(missing)} of {n} messages never reached a consumer "
                f"process: {missing[:10]}")
        self.must_be_empty(producer, [q], "every message was consumed by the processes")


def _translation_problem(exc: BaseException, secret: str) -> str | None:
    """What is wrong with a translated driver error, or None."""
    shown = f"{exc} {exc!r} {getattr(exc, 'url', '')}"
    if secret in shown:
        return f"the error shows the password: {exc}"
    if exc.__cause__ is None:
        return f"{type(exc).__name__} is not chained (raise ... from) to the driver's error"
    if isinstance(exc.__cause__, WiretaskError):
        return (f"{type(exc).__name__} is chained to another wiretask error, not to the "
                f"driver's: {exc.__cause__!r}")
    return None


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
