"""The proof that a stranger can write a transport: ``localbroker.py``, put together from
the code blocks of ``docs/writing-a-transport.md`` and nothing else, is installed with a
real ``wiretask.transports`` entry point, passes the conformance kit and runs tasks
through a real ``Worker`` by its URL scheme (and through ``App(transport=...)``)."""

from __future__ import annotations

import importlib
import re
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest

from wiretask.app import App
from wiretask.errors import ImproperlyConfigured
from wiretask.testing import CHECKS, check_transport
from wiretask.transports import memory
from wiretask.transports.base import Inspection, Transport
from wiretask.transports.url import registered_schemes, transport_from_url
from wiretask.worker import Worker

from .conftest import Site

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-a-transport.md"


def module_source() -> str:
    """Every block of the document marked ``localbroker.py``, in order."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r'```python title="localbroker\.py"\n(.*?)```', text, flags=re.S)
    assert len(blocks) >= 5, "the document lost its localbroker.py blocks"
    return "\n\n".join(blocks)


@pytest.fixture
def localbroker(site: Site) -> ModuleType:
    """The document's module, installed as a distribution registering ``local://``."""
    site.module("localbroker", module_source())
    site.distribution("wiretask-localbroker", {"local": "localbroker:LocalTransport"})
    return importlib.import_module("localbroker")


@pytest.fixture
def name() -> str:
    return f"proof-{uuid.uuid4().hex}"


def test_the_document_holds_a_whole_transport(localbroker: ModuleType) -> None:
    transport_class = localbroker.LocalTransport
    assert issubclass(transport_class, Transport)
    assert not transport_class.__abstractmethods__
    assert isinstance(transport_class(), Inspection)  # the capability of step 7
    assert registered_schemes()["local"].value == "localbroker:LocalTransport"


def test_it_passes_the_conformance_kit(localbroker: ModuleType, name: str) -> None:
    report = check_transport(lambda: transport_from_url(f"local://{name}"))
    assert report.transport == f"local://{name}"
    not_applicable = {"priority_order", "queue_stats", "broker_delay", "broadcast",
                      "fused_settlement", "error_translation", "process_consumers"}
    assert {check for check, _ in report.skipped} == not_applicable, report
    assert report.passed == tuple(c for c in CHECKS if c not in not_applicable), report


def run_tasks(app: App) -> None:
    """Ten tasks, one of them delayed, through a real worker on ``app``'s broker."""
    ran: list[tuple[int, float]] = []

    @app.task(name="proof.add")
    def add(x: int, y: int) -> int:
        ran.append((x + y, time.time()))
        return x + y

    results = [add.delay(i, i) for i in range(9)]
    sent = time.time()
    later = add.apply_async((50, 50), countdown=0.3)
    with Worker(app, concurrency=2):
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(9)]
        assert later.get(timeout=10) == 100
    [(_, ran_at)] = [(total, at) for total, at in ran if total == 100]
    assert ran_at >= sent + 0.3 - 0.01  # held by the broker until its countdown
    transport = app.transport
    assert isinstance(transport, Inspection)
    assert transport.size("celery") == 0


def test_it_runs_tasks_through_a_worker_by_its_url_scheme(
    localbroker: ModuleType, name: str
) -> None:
    with App("proof", broker=f"local://{name}", backend=f"memory://{name}") as app:
        assert type(app.transport).__name__ == "LocalTransport"
        run_tasks(app)
    memory.reset(name)


def test_app_takes_a_transport_factory(localbroker: ModuleType, name: str) -> None:
    def factory() -> Transport:
        transport: Transport = localbroker.LocalTransport(name)
        return transport

    with App("proof", transport=factory, backend=f"memory://{name}") as app:
        assert app.transport is app.transport  # the app keeps one
        assert app.new_transport() is not app.transport  # a worker gets its own
        run_tasks(app)
    memory.reset(name)


def test_app_refuses_what_is_not_a_transport_factory(
    localbroker: ModuleType, name: str
) -> None:
    instance = localbroker.LocalTransport(name)
    with pytest.raises(ImproperlyConfigured, match="takes a factory") as info:
        App("proof", transport=instance)
    assert info.value.setting == "transport"
    with pytest.raises(ImproperlyConfigured, match="takes a factory"):
        App("proof", transport=cast(Any, "local://x"))
    with pytest.raises(ImproperlyConfigured, match="broker_url is set") as info:
        App("proof", broker="memory://", transport=lambda: instance)
    assert info.value.setting == "broker_url"
    with pytest.raises(ImproperlyConfigured, match="broker_url is set"):
        App("proof", broker_url="memory://", transport=lambda: instance)
    later = App("proof", transport=lambda: instance)
    later.conf.broker_url = "redis://:secret@127.0.0.1/0"  # as `wiretask worker --broker`
    with pytest.raises(ImproperlyConfigured, match="broker_url is set") as info:
        later.new_transport()
    assert "secret" not in str(info.value)
    app = App("proof", transport=cast(Any, lambda: "local://x"))
    with pytest.raises(ImproperlyConfigured, match="returned 'local://x', not a Transport"):
        app.new_transport()


def test_the_documents_forwarding_example_watches_a_real_worker(name: str) -> None:
    """Step 10's ``AckLog`` around the memory transport sees every ack of a worker."""
    text = DOC.read_text(encoding="utf-8")
    [example] = [block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)
                 if "class AckLog" in block]
    with App("proof", broker=f"memory://{name}", backend=f"memory://{name}") as app:

        @app.task(name="proof.double")
        def double(i: int) -> int:
            return 2 * i

        results = [double.delay(i) for i in range(6)]
        namespace: dict[str, Any] = {"app": app}
        exec(compile(example, str(DOC), "exec"), namespace)  # the document's own code
        worker = namespace["worker"]
        with worker:
            assert [r.get(timeout=10) for r in results] == [0, 2, 4, 6, 8, 10]
            deadline = time.monotonic() + 10
            while len(worker.transport.acked) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert sorted(worker.transport.acked) == sorted(r.id for r in results)
        transport = app.transport
        assert isinstance(transport, Inspection)
        assert transport.size("celery") == 0
    memory.reset(name)
