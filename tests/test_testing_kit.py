"""The conformance kit: memory and SQLite pass it, and broken transports fail it."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import pytest

from wiretask.errors import TransportError
from wiretask.protocol.frame import Route
from wiretask.testing import (
    CHECKS,
    ConformanceError,
    ConformanceReport,
    ForwardingTransport,
    check_transport,
)
from wiretask.transports.base import Delivery, Prepared, Settlement, Transport
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
        # The base class's loop, so that every receive goes through the faulty _receive.
        return Transport._receive_many(self, queues, limit, timeout)

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
