"""The conformance kit: memory and SQLite pass it, and broken transports fail it."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import attrs
import pytest

from wiretask.errors import ConnectionLost, TransportError, ValidationError
from wiretask.protocol.frame import Frame, Outgoing, Route
from wiretask.testing import (
    CHECKS,
    ConformanceError,
    ConformanceReport,
    ForwardedDelivery,
    ForwardingTransport,
    check_transport,
)
from wiretask.transports.base import (
    Broadcast,
    BrokerDelay,
    Delivery,
    FusedSettlement,
    Inspection,
    Prepared,
    QueueStatistics,
    Settlement,
    Transport,
)
from wiretask.transports.memory import MemoryTransport
from wiretask.transports.sqlite import SQLiteTransport

# -- the real transports pass -----------------------------------------------------------------


def test_memory_transport_conforms() -> None:
    name = f"kit-{uuid.uuid4().hex}"
    report = check_transport(lambda: MemoryTransport(name))
    assert report.transport == f"memory://{name}"
    assert report.failed == ()
    assert report.skipped == (
        ("broker_delay", "the transport does not offer BrokerDelay (no due() to call)"),
        ("fused_settlement", "the transport does not offer FusedSettlement"),
        ("error_translation",
         "no broken_factory given (a factory of a transport that cannot reach its broker)"),
        ("process_consumers", "the transport is in-process only (capabilities.multi_process)"),
    )
    not_applicable = {"broker_delay", "fused_settlement", "error_translation",
                      "process_consumers"}
    assert report.passed == tuple(c for c in CHECKS if c not in not_applicable)
    assert report.ran == report.passed


def broken_sqlite(tmp_path: Path) -> Callable[[str], Transport]:
    """SQLite transports whose file cannot be opened: its directory is a regular file."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    return lambda password: SQLiteTransport(blocker / "broker.db", create_directory=False)


@pytest.mark.slow
def test_sqlite_transport_conforms_across_threads_and_processes(
    tmp_db: Path, tmp_path: Path
) -> None:
    report = check_transport(
        lambda: SQLiteTransport(tmp_db),
        process_factory=functools.partial(SQLiteTransport, tmp_db),
        broken_factory=broken_sqlite(tmp_path),
    )
    assert report.skipped == (
        ("broker_delay", "the transport does not offer BrokerDelay (no due() to call)"),
        ("fused_settlement", "the transport does not offer FusedSettlement"),
    )
    assert report.passed == tuple(
        c for c in CHECKS if c not in ("broker_delay", "fused_settlement")
    )
    assert f"{len(CHECKS) - 2} passed" in str(report)


def test_sqlite_without_process_factory_skips_only_that_check(tmp_db: Path) -> None:
    report = check_transport(lambda: SQLiteTransport(tmp_db),
                             only=["publish_receive_ack", "process_consumers"])
    assert report.passed == ("publish_receive_ack",)
    assert ("process_consumers", "no process_factory given (a picklable factory is needed)") in (
        report.skipped
    )


# -- broken transports fail, naming the check -------------------------------------------------


class Faulty(ForwardingTransport):
    """A memory transport with one rule broken, chosen by ``fault``: a ForwardingTransport
    whose hooks break it."""

    def __init__(self, name: str, fault: str) -> None:
        super().__init__(MemoryTransport(name))
        self.url = f"faulty+{self.inner.url}"
        self.fault = fault

    def close(self) -> None:
        if self.fault != "close-keeps-unacked":
            self.inner.close()

    def _publish(self, messages: Sequence[Prepared]) -> None:
        changed = []
        for message in messages:
            frame, not_before = message.frame, message.not_before
            if self.fault == "ignores-delay":
                not_before = None
            if self.fault == "ignores-priority":
                frame = attrs.evolve(frame, properties={
                    k: v for k, v in frame.properties.items() if k != "priority"
                })
            if self.fault == "drops-none-headers":
                frame = attrs.evolve(frame, headers={
                    k: v for k, v in frame.headers.items() if v is not None
                })
            changed.append(message._replace(
                frame=frame, not_before=not_before,
                due=None if not_before is None else message.due,
            ))
        super()._publish(changed)

    def _receive(self, queues: list[str], timeout: float) -> Delivery | None:
        if self.fault == "hangs":
            time.sleep(30)
        delivery = super()._receive(queues, timeout)
        if delivery is None:
            return None
        if self.fault == "truncates-large-bodies" and len(delivery.frame.body) > 1 << 20:
            delivery.frame = attrs.evolve(delivery.frame, body=delivery.frame.body[:-1])
        if self.fault == "duplicates":
            # Hands the message out but leaves a copy behind: a double delivery.
            self.inner.publish(delivery.frame, Route(delivery.queue))
        return delivery

    def _receive_many(self, queues: list[str], limit: int, timeout: float) -> Sequence[Delivery]:
        if self.fault == "receive-many-waits":  # waits for every message, not the first
            taken: list[Delivery] = []
            deadline = time.monotonic() + timeout
            while len(taken) < limit and time.monotonic() < deadline:
                got = self._receive(queues, max(deadline - time.monotonic(), 0))
                if got is not None:
                    taken.append(got)
            return taken
        # The base class's loop, so that every receive goes through the faulty _receive.
        return Transport._receive_many(self, queues, limit, timeout)

    def _ack_many(self, deliveries: list[Delivery]) -> None:
        if self.fault == "ack-many-stops-at-first":
            for delivery in deliveries:
                delivery.ack()  # the first failure ends it: the others stay unacked
            return
        super()._ack_many(deliveries)

    def _ack_and_receive(
        self, deliveries: list[Delivery], queues: list[str], limit: int
    ) -> Sequence[Delivery]:
        if self.fault == "takes-before-acking":
            taken = self._receive_many(queues, limit, 0.0)
            self._ack_many(deliveries)
            return taken
        return super()._ack_and_receive(deliveries, queues, limit)

    def receive(self, queues: Sequence[str], *, timeout: float) -> Delivery | None:
        if self.fault == "skips-checks":  # overrides the public method, as it must not,
            return None  # and answers without checking its arguments
        return super().receive(queues, timeout=timeout)

    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        try:
            super()._settle(delivery, how, reason)
        except TransportError:
            if self.fault != "lenient-settle":  # swallows the error of a second settlement
                raise


@pytest.mark.parametrize(
    ("fault", "check", "problem"),
    [
        ("ignores-delay", "delayed_delivery", "early"),
        ("ignores-priority", "priority_order", "received [b'low-1', b'high-1'"),
        ("drops-none-headers", "headers_properties_roundtrip", "header 'none'"),
        ("truncates-large-bodies", "large_and_binary_bodies", "differing from byte"),
        ("lenient-settle", "settle_twice", "ack after ack did not raise TransportError"),
        ("close-keeps-unacked", "unacked_returns_on_close", "not received within"),
        ("duplicates", "publish_receive_ack", "an acked message must be gone"),
        ("duplicates", "concurrent_consumers", "delivered more than once"),
        ("hangs", "receive_timeout", "did not finish within 0.5 s"),
        ("receive-many-waits", "receive_many", "it must wait for the first only"),
        ("ack-many-stops-at-first", "ack_many", "did not ack the other one"),
        ("takes-before-acking", "ack_and_receive",
         "the message a failed ack_and_receive must not take was not received"),
        ("skips-checks", "argument_validation", "receive([]) was accepted"),
    ],
)
def test_a_broken_rule_fails_its_check(fault: str, check: str, problem: str) -> None:
    name = f"kit-{uuid.uuid4().hex}"
    with pytest.raises(ConformanceError) as info:
        check_transport(lambda: Faulty(name, fault), only=[check], wait=0.5,
                        check_timeout=0.5 if fault == "hangs" else 30, messages=50)
    error = info.value
    assert isinstance(error, AssertionError)  # pytest reports it as a failed assertion
    assert error.check == check
    assert problem in error.problem
    assert check in str(error)


def test_fail_fast_false_runs_everything_and_reports_all_failures() -> None:
    name = f"kit-{uuid.uuid4().hex}"
    with pytest.raises(ConformanceError) as info:
        check_transport(lambda: Faulty(name, "ignores-delay"), fail_fast=False,
                        only=["publish_receive_ack", "delayed_delivery", "publish_many"])
    report = info.value.report
    assert isinstance(report, ConformanceReport)
    assert report.passed == ("publish_receive_ack",)
    assert [name for name, _ in report.failed] == ["delayed_delivery", "publish_many"]
    assert report.ran == ("publish_receive_ack", "delayed_delivery", "publish_many")
    assert "also failed: publish_many" in str(info.value)
    assert "FAIL delayed_delivery" in str(report)


def test_skip_with_a_reason() -> None:
    name = f"kit-{uuid.uuid4().hex}"
    report = check_transport(
        lambda: Faulty(name, "ignores-delay"),
        skip={"delayed_delivery": "known: no delays", "publish_many": "known: no delays"},
        only=["delayed_delivery", "publish_many", "reject_drop"],
    )
    assert report.passed == ("reject_drop",)
    assert ("delayed_delivery", "known: no delays") in report.skipped


def test_unknown_check_names_are_refused() -> None:
    with pytest.raises(ValueError, match="priority_ordr"):
        check_transport(MemoryTransport, only=["priority_ordr"])
    with pytest.raises(ValueError, match="nope"):
        check_transport(MemoryTransport, skip={"nope": "x"})


def test_unpicklable_process_factory_is_reported(tmp_db: Path) -> None:
    with pytest.raises(ConformanceError, match="cannot be pickled"):
        check_transport(lambda: SQLiteTransport(tmp_db),
                        process_factory=lambda: SQLiteTransport(tmp_db),
                        only=["process_consumers"])


# -- the forwarding wrapper -----------------------------------------------------------------


class Recording(ForwardingTransport):
    """Records every hook call it forwards."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.calls: list[str] = []

    def _publish(self, messages: Sequence[Prepared]) -> None:
        self.calls.append(f"publish {len(messages)}")
        super()._publish(messages)

    def _settle(self, delivery: Delivery, how: Settlement, reason: str) -> None:
        self.calls.append(how)
        super()._settle(delivery, how, reason)

    def _ack_many(self, deliveries: list[Delivery]) -> None:
        self.calls.append(f"ack_many {len(deliveries)}")
        super()._ack_many(deliveries)


class WithDue(MemoryTransport):
    """The memory broker, offering BrokerDelay too."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.due_calls = 0

    def due(self) -> int:
        self.due_calls += 1
        return 0


def test_a_forwarding_transport_passes_the_kit_wherever_its_inner_one_does() -> None:
    name = f"kit-{uuid.uuid4().hex}"
    report = check_transport(lambda: ForwardingTransport(MemoryTransport(name)))
    assert report.failed == ()
    assert "size_purge_peek" in report.passed  # Inspection is forwarded
    assert report.transport == f"memory://{name}"


def test_it_offers_exactly_the_capabilities_of_the_inner_transport() -> None:
    name = f"kit-{uuid.uuid4().hex}"
    plain = ForwardingTransport(MemoryTransport(name))
    assert isinstance(plain, Inspection)
    assert not isinstance(plain, BrokerDelay | FusedSettlement)
    assert plain.size("q") == 0
    assert isinstance(plain, QueueStatistics)  # forwarded too
    [stats] = plain.queue_stats(["q"])
    assert (stats.queue, stats.ready, stats.in_flight) == ("q", 0, 0)
    delayed = Recording(WithDue(name))
    assert isinstance(delayed, Recording)  # a subclass stays itself
    assert isinstance(delayed, Inspection) and isinstance(delayed, BrokerDelay)
    assert delayed.due() == 0 and isinstance(delayed.inner, WithDue)
    assert delayed.inner.due_calls == 1
    assert type(delayed) is type(Recording(WithDue(name)))  # one class per combination
    assert isinstance(delayed, Broadcast)  # the memory broker broadcasts too
    assert repr(delayed).startswith(
        "<Recording[Inspection, QueueStatistics, BrokerDelay, Broadcast] of ")
    with pytest.raises(ValidationError, match="inner"):
        ForwardingTransport(cast(Any, "memory://"))


def test_settlements_and_batches_reach_the_hooks_and_the_inner_transport() -> None:
    name = f"kit-{uuid.uuid4().hex}"
    t = Recording(MemoryTransport(name))
    t.publish_many([Outgoing(Frame(body=str(i).encode(), content_type="x",
                                   content_encoding="binary"), Route("q")) for i in range(4)])
    first, second, third, fourth = t.receive_many(["q"], limit=4, timeout=1)
    assert all(isinstance(d, ForwardedDelivery) for d in (first, second, third, fourth))
    first.ack()
    second.reject(requeue=True)
    t.ack_many([third, fourth])
    with pytest.raises(TransportError, match="already acked"):
        third.ack()  # the inner delivery's settle-once rule
    again = t.receive(["q"], timeout=1)
    assert again is not None and again.redelivered and again.frame.body == b"1"
    again.dead_letter("kept")
    assert t.calls == ["publish 4", "ack", "requeue", "ack_many 2", "ack", "dead_letter"]
    assert [d.reason for d in t.dead_letters("q")] == ["kept"]
    assert t.size("q") == 0


def test_a_due_that_moves_nothing_fails_broker_delay() -> None:
    name = f"kit-{uuid.uuid4().hex}"
    with pytest.raises(ConformanceError) as info:
        check_transport(lambda: ForwardingTransport(WithDue(name)), only=["broker_delay"],
                        wait=1)
    assert "due() after a delayed message's time returned 0" in info.value.problem


class Down(ForwardingTransport):
    """A transport whose broker is unreachable, translating that wrongly as ``fault``."""

    def __init__(self, password: str, fault: str) -> None:
        super().__init__(MemoryTransport(f"kit-{uuid.uuid4().hex}"))
        self.password = password
        self.fault = fault

    def _down(self) -> None:
        try:
            raise ConnectionRefusedError(f"refused user:{self.password}@127.0.0.1")
        except OSError as exc:
            if self.fault == "escapes":
                raise
            if self.fault == "not-recoverable":
                raise TransportError(f"failed: {type(exc).__name__}", url=self.url) from exc
            if self.fault == "unchained":
                raise ConnectionLost("failed", url=self.url) from None
            if self.fault == "scrubs":  # the right way
                text = str(exc).replace(self.password, "**")
                raise ConnectionLost(f"failed: {text}", url=self.url) from exc
            raise ConnectionLost(f"failed: {exc}", url=self.url) from exc

    def connect(self) -> None:
        self._down()

    def _publish(self, messages: Sequence[Prepared]) -> None:
        self._down()

    def _receive(self, queues: list[str], timeout: float) -> Delivery | None:
        self._down()
        return None

    def _receive_many(self, queues: list[str], limit: int, timeout: float) -> Sequence[Delivery]:
        self._down()
        return []


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ("leaks", "connect() on an unreachable broker: the error shows the password"),
        ("escapes", "connect() on an unreachable broker let a driver error escape: "
                    "ConnectionRefusedError"),
        ("not-recoverable", "raised TransportError: failed: ConnectionRefusedError"),
        ("unchained", "ConnectionLost is not chained (raise ... from)"),
    ],
)
def test_a_wrong_error_translation_fails(fault: str, problem: str) -> None:
    name = f"kit-{uuid.uuid4().hex}"
    with pytest.raises(ConformanceError) as info:
        check_transport(lambda: MemoryTransport(name), only=["error_translation"],
                        broken_factory=lambda password: Down(password, fault))
    assert problem in info.value.problem


def test_a_right_error_translation_passes() -> None:
    name = f"kit-{uuid.uuid4().hex}"

    class Inspectable(Down):
        def size(self, queue: str) -> int:
            self._down()
            return 0

    report = check_transport(lambda: MemoryTransport(name), only=["error_translation"],
                             broken_factory=lambda password: Inspectable(password, "scrubs"))
    assert report.passed == ("error_translation",)
