"""The result-backend contract, run against every backend (see conftest.KINDS)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wiretask.errors import EncodeError, ImproperlyConfigured, UnknownCodec, ValidationError
from wiretask.protocol import states
from wiretask.protocol.states import make_meta
from wiretask.results import ResultBackend, backend_from_url
from wiretask.results.exceptions import exception_from_meta

from .conftest import Factory

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
#: Upper bound on how late a timed-out next() may return.
SLACK = 1.0


def tid() -> str:
    return str(uuid.uuid4())


def progress(task_id: str, i: int) -> dict[str, Any]:
    return make_meta(task_id, "PROGRESS", {"current": i})


def success(task_id: str, value: Any = 42) -> dict[str, Any]:
    return make_meta(task_id, states.SUCCESS, value, date_done=NOW)


def drain(sub: Any, *, until_ready: bool = True, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Collect metas until a ready state (bounded by ``timeout``)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = sub.next(max(0.0, deadline - time.monotonic()))
        if meta is None:
            continue
        got.append(meta)
        if until_ready and meta["status"] in states.READY_STATES:
            return got
    raise AssertionError(f"no ready state within {timeout} s; got {got}")


# -- store / get / forget -----------------------------------------------------------------


def test_unknown_task_reads_as_none(backend: ResultBackend) -> None:
    assert backend.get(tid()) is None


def test_store_and_get(backend: ResultBackend) -> None:
    task_id = tid()
    meta = success(task_id, {"a": [1, 2.5, "x", None, True]})
    backend.store(task_id, meta)
    assert backend.get(task_id) == meta


def test_a_second_instance_sees_the_same_store(make_backend: Factory) -> None:
    a, b = make_backend(), make_backend()
    task_id = tid()
    a.store(task_id, progress(task_id, 1))
    assert b.get(task_id) == progress(task_id, 1)


def test_forget(backend: ResultBackend) -> None:
    task_id = tid()
    backend.store(task_id, success(task_id))
    backend.forget(task_id)
    assert backend.get(task_id) is None
    backend.forget(task_id)  # idempotent
    # a forgotten final state no longer blocks a new one
    backend.store(task_id, make_meta(task_id, states.FAILURE, ValueError("x"), date_done=NOW))
    assert backend.get(task_id)["status"] == states.FAILURE  # type: ignore[index]


def test_results_expire(make_backend: Factory) -> None:
    backend = make_backend(expires=0.3)
    task_id = tid()
    backend.store(task_id, success(task_id))
    assert backend.get(task_id) is not None
    deadline = time.monotonic() + 5
    while backend.get(task_id) is not None:
        assert time.monotonic() < deadline, "result did not expire"
        time.sleep(0.05)
    # an expired final state no longer blocks a new one
    backend.store(task_id, progress(task_id, 2))
    assert backend.get(task_id) == progress(task_id, 2)


def test_each_store_resets_the_expiry(make_backend: Factory) -> None:
    backend = make_backend(expires=1.0)
    task_id = tid()
    backend.store(task_id, progress(task_id, 0))
    for i in range(1, 4):
        time.sleep(0.4)
        backend.store(task_id, progress(task_id, i))
    assert backend.get(task_id) == progress(task_id, 3)


def test_no_expiry(make_backend: Factory) -> None:
    backend = make_backend(expires=None)
    task_id = tid()
    backend.store(task_id, success(task_id))
    assert backend.get(task_id) == success(task_id)


@pytest.mark.parametrize("final", sorted(states.READY_STATES))
def test_updates_after_a_ready_state_are_ignored(backend: ResultBackend, final: str) -> None:
    task_id = tid()
    first = make_meta(task_id, final, 1 if final == states.SUCCESS else ValueError("no"),
                      date_done=NOW)
    backend.store(task_id, first)
    for later in [states.SUCCESS, states.FAILURE, states.REVOKED, states.STARTED,
                  states.RETRY, "PROGRESS"]:
        backend.store(task_id, make_meta(task_id, later, None, date_done=NOW))
    assert backend.get(task_id) == first


def test_retry_cycles_are_stored(backend: ResultBackend) -> None:
    task_id = tid()
    sequence = [
        make_meta(task_id, states.STARTED, {"pid": 1, "hostname": "w@h"}),
        make_meta(task_id, states.RETRY, ValueError("again"), traceback="Traceback ..."),
        make_meta(task_id, states.STARTED, {"pid": 1, "hostname": "w@h"}),
        success(task_id, "done"),
    ]
    sub = backend.subscribe(task_id)
    for meta in sequence:
        backend.store(task_id, meta)
        assert backend.get(task_id) == meta
    assert drain(sub) == sequence
    sub.close()


def test_store_validates_the_meta(backend: ResultBackend) -> None:
    task_id = tid()
    with pytest.raises(ValidationError):
        backend.store(task_id, success("another-id"))
    with pytest.raises(ValidationError):
        backend.store(task_id, {"result": 1, "task_id": task_id})
    with pytest.raises(ValidationError):
        backend.store("", {"status": "X", "task_id": ""})
    assert backend.get(task_id) is None


def test_unserializable_results_are_encode_errors(backend: ResultBackend) -> None:
    task_id = tid()
    with pytest.raises(EncodeError):
        backend.store(task_id, success(task_id, {1, 2}))
    with pytest.raises(EncodeError):
        backend.store(task_id, success(task_id, object()))
    assert backend.get(task_id) is None


def test_failure_meta_rebuilds_the_exception(backend: ResultBackend) -> None:
    task_id = tid()
    backend.store(task_id, make_meta(task_id, states.FAILURE, KeyError("k"),
                                     traceback="Traceback ...", date_done=NOW))
    meta = backend.get(task_id)
    assert meta is not None and meta["status"] == states.FAILURE
    assert meta["result"] == {"exc_type": "KeyError", "exc_message": ["k"],
                              "exc_module": "builtins"}
    exc = exception_from_meta(meta["result"])
    assert type(exc) is KeyError and exc.args == ("k",)


def test_url_hides_the_password_and_repr_names_it(backend: ResultBackend) -> None:
    assert "://" in backend.url
    assert backend.url in repr(backend)


def test_unknown_serializer(make_backend: Factory) -> None:
    with pytest.raises(UnknownCodec):
        make_backend(serializer="nope")


def test_msgpack_results(make_backend: Factory) -> None:
    backend = make_backend(serializer="msgpack")
    task_id = tid()
    backend.store(task_id, success(task_id, {"b": [1, 2]}))
    assert backend.get(task_id) == success(task_id, {"b": [1, 2]})


# -- streaming --------------------------------------------------------------------------------


def test_subscriber_before_the_first_store_sees_every_state_in_order(
    make_backend: Factory,
) -> None:
    listener, producer = make_backend(), make_backend()
    task_id = tid()
    sequence = [make_meta(task_id, states.STARTED, None),
                *(progress(task_id, i) for i in range(5)), success(task_id)]
    with listener.subscribe(task_id) as sub:

        def produce() -> None:
            for meta in sequence:
                producer.store(task_id, meta)

        thread = threading.Thread(target=produce)
        thread.start()
        got = drain(sub)
        thread.join(10)
    assert got == sequence
    assert sub.finished


def test_late_subscriber_first_receives_the_current_state(backend: ResultBackend) -> None:
    task_id = tid()
    backend.store(task_id, progress(task_id, 1))
    backend.store(task_id, progress(task_id, 2))
    sub = backend.subscribe(task_id)
    assert sub.next(5) == progress(task_id, 2)
    assert sub.next(0.2) is None  # delivered once
    backend.store(task_id, success(task_id))
    assert sub.next(5) == success(task_id)
    assert sub.finished
    assert sub.next(None) is None  # finished: returns at once
    sub.close()


def test_late_subscriber_of_a_finished_task(backend: ResultBackend) -> None:
    task_id = tid()
    backend.store(task_id, success(task_id, "done"))
    with backend.subscribe(task_id) as sub:
        assert sub.next(5) == success(task_id, "done")
        assert sub.finished


def test_next_times_out_with_none_within_bounds(backend: ResultBackend) -> None:
    with backend.subscribe(tid()) as sub:
        for timeout in (0.0, 0.25):
            start = time.monotonic()
            assert sub.next(timeout) is None
            elapsed = time.monotonic() - start
            assert timeout <= elapsed + 0.01 and elapsed < timeout + SLACK


def test_subscriptions_for_other_tasks_see_nothing(backend: ResultBackend) -> None:
    a, b = tid(), tid()
    with backend.subscribe(a) as sub:
        backend.store(b, success(b))
        assert sub.next(0.3) is None


def test_many_threads_subscribe_to_one_task(make_backend: Factory) -> None:
    producer = make_backend()
    task_id = tid()
    sequence = [*(progress(task_id, i) for i in range(10)), success(task_id)]
    results: dict[int, list[dict[str, Any]]] = {}
    ready = threading.Barrier(9)

    def listen(n: int) -> None:
        with make_backend().subscribe(task_id) as sub:
            ready.wait(10)
            results[n] = drain(sub)

    threads = [threading.Thread(target=listen, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    ready.wait(10)
    for meta in sequence:
        producer.store(task_id, meta)
    for thread in threads:
        thread.join(15)
    assert len(results) == 8
    for got in results.values():
        assert got == sequence


def test_subscribing_while_states_are_stored_never_duplicates_or_reorders(
    make_backend: Factory,
) -> None:
    """Subscriptions started at random moments of a busy stream see a gap-free,
    duplicate-free, ordered suffix of it that ends with the final state."""
    producer = make_backend()
    listener = make_backend()
    task_ids = [tid() for _ in range(6)]
    n = 60
    errors: list[str] = []

    def produce(task_id: str) -> None:
        for i in range(n):
            producer.store(task_id, progress(task_id, i))
        producer.store(task_id, success(task_id))

    def listen(task_id: str, delay: float) -> None:
        time.sleep(delay)
        with listener.subscribe(task_id) as sub:
            got = drain(sub)
        counters = [m["result"]["current"] for m in got[:-1]]
        if got[-1] != success(task_id):
            errors.append(f"{task_id}: did not end with SUCCESS: {got[-1]}")
        if counters and counters != list(range(counters[0], n)):
            errors.append(f"{task_id}: not a gap-free ordered suffix: {counters}")

    threads = []
    for k, task_id in enumerate(task_ids):
        threads.append(threading.Thread(target=listen, args=(task_id, 0.002 * k)))
        threads.append(threading.Thread(target=produce, args=(task_id,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []


def test_closing_the_backend_ends_its_subscriptions(make_backend: Factory) -> None:
    backend = make_backend()
    sub = backend.subscribe(tid())
    backend.close()
    start = time.monotonic()
    assert sub.next(2) is None
    assert time.monotonic() - start < SLACK
    sub.close()


# -- serialization round trip -----------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.datetimes(timezones=st.just(UTC)), st.decimals(allow_nan=False, allow_infinity=False),
    st.uuids(), st.binary(max_size=16),
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
_status = st.sampled_from([states.STARTED, states.SUCCESS, "PROGRESS", states.RETRY])


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_json_value, status=_status, traceback=st.none() | st.text(max_size=40),
       group=st.none() | st.text(min_size=1, max_size=8))
def test_meta_round_trips_through_the_backend(
    backend: ResultBackend, value: Any, status: str, traceback: str | None, group: str | None
) -> None:
    task_id = tid()
    meta = make_meta(task_id, status, value, traceback=traceback, group_id=group,
                     children=[[["c", None], None]], date_done=NOW)
    backend.store(task_id, meta)
    got = backend.get(task_id)
    assert got == meta
    if isinstance(value, Decimal):
        assert isinstance(got["result"], Decimal)  # type: ignore[index]
    backend.forget(task_id)


# -- URLs ---------------------------------------------------------------------------------


def test_unknown_scheme_names_the_supported_ones() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"memory://") as info:
        backend_from_url("mongodb://user:secret@host/db")
    assert "secret" not in str(info.value)


def test_bad_expiry() -> None:
    for bad in (-1, float("nan"), "1 day"):
        with pytest.raises(ImproperlyConfigured):
            backend_from_url("memory://x", expires=bad)  # type: ignore[arg-type]
