"""Invariants of the hot-path shortcuts the benchmarks led to (bench/README.md).

Each shortcut must give exactly what the plain code gave: these tests pin that down.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

import hiredis
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiretask import calling
from wiretask.app import App, Settings
from wiretask.codecs import Serializer, serializers
from wiretask.errors import ValidationError
from wiretask.protocol import states
from wiretask.retry import RetryPolicy


@pytest.mark.parametrize("raw", [bytes(16), b"\xff" * 16, bytes(range(16)), bytes(range(16, 32))])
def test_new_task_id_is_str_of_uuid4(raw: bytes) -> None:
    expected = str(uuid.UUID(bytes=raw, version=4))
    assert calling.new_task_id(lambda n: raw[:n]) == expected


def test_new_task_id_is_random_uuid4() -> None:
    ids = {calling.new_task_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in list(ids)[:50]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_settings_policy_follows_the_setting() -> None:
    setting = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
    first = calling._settings_policy(setting)
    assert first == RetryPolicy.from_options(setting)
    assert calling._settings_policy(dict(setting)) is first
    setting["max_retries"] = 5
    assert calling._settings_policy(setting).max_retries == 5
    assert calling._settings_policy(None) == RetryPolicy()
    policy = RetryPolicy(max_retries=1)
    assert calling._settings_policy(policy) is policy


def test_settings_policy_compares_types_and_copies_lists() -> None:
    assert calling._settings_policy({"max_retries": 1}).max_retries == 1
    with pytest.raises(ValidationError):
        calling._settings_policy({"max_retries": True})
    errors: list[type[BaseException]] = [KeyError]
    assert calling._settings_policy({"retry_errors": errors}).retry_errors == (KeyError,)
    errors.append(OSError)
    assert calling._settings_policy({"retry_errors": errors}).retry_errors == (KeyError, OSError)


def test_settings_policy_refuses_what_from_options_refuses() -> None:
    with pytest.raises(ValidationError):
        calling._settings_policy({"max_retrys": 3})
    with pytest.raises(ValidationError):
        calling._settings_policy("fast")


class _Point(NamedTuple):
    x: Any
    y: Any


class _Mapping(dict[Any, Any]):
    pass


class _Text(str):
    pass


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ([1, "a", {"b": [None, {"c": 1.5}]}], True),
        ({b"raw": 1, "text": {b"x": b"y"}}, True),
        ({_Text("sub"): 1}, True),
        (OrderedDict(a={"b": 1}), True),
        (_Mapping(a=1), True),
        ([bytearray(b"x"), msgpack.ExtType(1, b"x"), msgpack.Timestamp(1, 0)], True),
        (_nested(300, 1), True),
        ({1: "a"}, False),
        ({True: "a"}, False),
        ({None: "a"}, False),
        ({(1, 2): "a"}, False),
        ([{"a": [{"b": {2.5: 1}}]}], False),
        (_Mapping({1: 2}), False),
        (_Point({"a": 1}, [{3: 4}]), False),
        (_Point({"a": 1}, [{"b": 4}]), True),
        (_nested(300, {7: 1}), False),
        ({b"raw": {1: 2}}, False),
    ],
)
def test_msgpack_key_check_matches_the_walk(value: Any, ok: bool) -> None:
    assert serializers._msgpack_keys_walk(value) is ok
    assert serializers._msgpack_keys_ok(value) is ok
    if ok:
        assert msgpack.unpackb(serializers.msgpack_dumps(value), raw=False) is not None
    else:
        with pytest.raises(ValueError, match="map keys"):
            serializers.msgpack_dumps(value)


# -- the calling API's option plans (calling.CallBuilder) ---------------------------------


def _app(**settings: Any) -> App:
    return App("plans", broker="memory://", **settings)


def test_a_changed_setting_reaches_the_next_call() -> None:
    app = _app()
    first = app.build_call("t", (1,))
    assert first.route.queue == "celery"
    assert first.message.content_type == "application/json"
    app.conf.task_default_queue = "other"
    app.conf["task_serializer"] = "msgpack"
    second = app.build_call("t", (1,))
    assert second.route.queue == "other"
    assert second.message.content_type == "application/x-msgpack"
    app.conf.update(task_default_priority=3)
    assert app.build_call("t", (1,)).message.priority == 3
    del app.conf["task_default_priority"]
    assert app.build_call("t", (1,)).message.priority is None


def test_every_settings_mutator_counts_as_a_change() -> None:
    conf = Settings(a=1)
    seen = {conf._version}
    for change in (
        lambda: conf.__setitem__("b", 2), lambda: conf.update(c=3),
        lambda: conf.setdefault("d", 4), lambda: conf.pop("d"), conf.popitem,
        lambda: conf.__delitem__("b"), lambda: conf.__ior__({"e": 5}), conf.clear,
        lambda: setattr(conf, "f", 6),
    ):
        change()
        assert conf._version not in seen
        seen.add(conf._version)


def test_a_bad_static_option_is_refused_every_time() -> None:
    app = _app()
    for _ in range(2):  # nothing invalid is cached
        with pytest.raises(ValidationError) as info:
            app.build_call("t", (1,), priority=-1)
        assert info.value.field == "priority"
        with pytest.raises(ValidationError) as info:
            app.build_call("t", (1,), routing_key=["not", "hashable"])
        assert info.value.field == "routing_key"


def test_plans_follow_the_registry_and_the_task_defaults() -> None:
    app = _app()
    assert app.build_call("t", ()).message.content_type == "application/json"
    json = app.registry.serializer("json")
    app.registry.register_serializer(Serializer(
        name="json", content_type="application/x-json-v2", content_encoding="utf-8",
        dumps=json.dumps, loads=json.loads,
    ))
    assert app.build_call("t", ()).message.content_type == "application/x-json-v2"

    @app.task(name="routed", queue="q1", time_limit=5)
    def routed() -> None: ...

    call = app.build_call("routed", ())
    assert (call.route.queue, call.message.timelimit) == ("q1", (5.0, None))
    with pytest.raises(TypeError):
        routed.defaults["queue"] = "q2"  # type: ignore[index]


def test_the_plan_cache_is_bounded() -> None:
    app = _app()
    builder = app._builder
    for limit in range(builder.max_plans + 10):
        app.build_call("t", (), time_limit=limit)
    assert 0 < len(builder._plans) <= builder.max_plans
    assert app.build_call("t", (), time_limit=3).message.timelimit == (3.0, None)


def test_per_call_options_are_not_cached() -> None:
    app = _app()
    a = app.build_call("t", (1,), task_id="a", expires=10, headers={"x": 1})
    b = app.build_call("t", (2,))
    assert (a.message.id, a.message.extra_headers, a.message.expiration) == ("a", {"x": 1}, "10000")
    assert b.message.id != "a" and b.message.extra_headers == {} and b.message.expires is None
    assert b.message.args == (2,) and b.message.root_id == b.message.id


def test_the_message_does_not_share_the_callers_kwargs() -> None:
    app = _app()
    kwargs = {"x": 1}
    call = app.build_call("t", (), kwargs)
    kwargs["x"] = 2
    assert call.message.kwargs == {"x": 1}


def _f1(a, b=1, *args, c, d=2, **kw): ...  # type: ignore[no-untyped-def]
def _f2(a, /, b, *, c=3): ...  # type: ignore[no-untyped-def]
def _f3(): ...  # type: ignore[no-untyped-def]
def _f4(*args, **kwargs): ...  # type: ignore[no-untyped-def]
def _f5(a, b, /): ...  # type: ignore[no-untyped-def]


@pytest.mark.parametrize("fn", [_f1, _f2, _f3, _f4, _f5])
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1,), {}), ((1, 2), {}), ((1, 2, 3), {}), ((1,), {"c": 1}),
     ((1, 2), {"c": 1, "z": 0}), ((), {"a": 1, "b": 2, "c": 3}), ((1,), {"a": 1, "c": 2}),
     ((1, 2), {"b": 2}), ((1, 2, 3, 4), {"c": 1, "d": 2})],
)
def test_argument_checker_binds_like_inspect(fn: Any, args: tuple[Any, ...],
                                             kwargs: dict[str, Any]) -> None:
    signature = inspect.signature(fn)
    checker = calling.argument_checker(signature)
    assert checker is not None
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        with pytest.raises(TypeError):
            checker(*args, **kwargs)
    else:
        checker(*args, **kwargs)


def test_a_task_refuses_bad_arguments_with_inspects_message() -> None:
    app = _app()

    @app.task(name="pair")
    def pair(a: int, b: int, *, c: int = 0) -> int:
        return a + b + c

    pair.check_arguments((1, 2), {"c": 3})
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        pair.check_arguments((1,), {})
    with pytest.raises(TypeError, match="unexpected keyword argument 'd'"):
        pair.check_arguments((1, 2), {"d": 3})


def test_the_reused_msgpack_packer_starts_clean_after_a_failure() -> None:
    for bad in ([1, object()], [1, 2**70], {"a": [1, {2: 3}]}):
        with pytest.raises((TypeError, OverflowError, ValueError)):
            serializers.msgpack_dumps(bad)
        assert serializers.msgpack_dumps([1, "x"]) == msgpack.packb([1, "x"], use_bin_type=True)


def test_app_and_worker_import_no_sqlite_or_ctypes() -> None:
    """The worker's RSS bound (issue 18): a Redis worker loads neither the SQLite driver
    (``wiretask.beat``'s service loads on first use) nor ctypes (loaded by the first time
    limit that fires); both still load when used."""
    code = (
        "import sys, wiretask.app, wiretask.worker, wiretask.worker.pools\n"
        "assert 'sqlite3' not in sys.modules and 'ctypes' not in sys.modules, "
        "[m for m in ('sqlite3', 'ctypes') if m in sys.modules]\n"
        "from wiretask.beat import EmbeddedBeat, Service\n"
        "from wiretask.worker.pools._inthread import async_raise\n"
        "import threading\n"
        "assert not async_raise(threading.get_ident() + 1, None)\n"
        "assert 'sqlite3' in sys.modules and 'ctypes' in sys.modules\n"
        "print(Service.__module__, EmbeddedBeat.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["wiretask.beat.service", "EmbeddedBeat"]
    import wiretask.beat  # noqa: PLC0415

    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        wiretask.beat.Nothing  # noqa: B018


def test_task_running_sets_and_restores_the_request() -> None:
    """``Task.running`` (a class-based context manager on the worker's path) makes the
    request current inside the block, nests, and restores on the way out, also when
    the block raises."""
    from wiretask.app import Request  # noqa: PLC0415

    app = App("running")

    @app.task(name="t.running")
    def noop() -> None:
        return None

    outer, inner = Request(id="outer", task="t.running"), Request(id="inner", task="t.running")
    assert noop.request.id is None
    with noop.running(outer) as entered:
        assert entered is outer and noop.request is outer
        seen: list[Request] = []

        def fail_inside() -> None:
            with noop.running(inner):
                seen.append(noop.request)
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            fail_inside()
        assert seen == [inner]
        assert noop.request is outer
    assert noop.request.id is None


@pytest.mark.parametrize("when", [
    datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC),
    datetime(2026, 12, 5, 1, 2, 3, tzinfo=UTC),
    datetime(2026, 12, 5, 1, 2, 3, 7),
    datetime(2026, 12, 5, 1, 2, 3, 7, tzinfo=timezone(timedelta(hours=5, seconds=30))),
])
def test_make_meta_date_done_is_isoformat(when: datetime) -> None:
    """``make_meta`` writes ``date_done`` through ``format_iso`` (orjson for UTC): the
    same text as ``isoformat()`` of the aware value, naive read as UTC."""
    meta = states.make_meta("id", states.SUCCESS, 1, date_done=when)
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    assert meta["date_done"] == aware.isoformat()


_ARG = st.one_of(st.binary(max_size=40), st.text(max_size=20), st.integers(-(2**40), 2**40))


@given(st.lists(st.lists(_ARG, min_size=1, max_size=5), min_size=1, max_size=4),
       st.data())
def test_redis_request_with_pieces_is_the_joined_request(
    commands: list[list[Any]], data: st.DataObject
) -> None:
    """``_redis.client._request`` packs with hiredis first and looks for ``Pieces`` only
    when hiredis refuses: a request with an argument given in parts writes exactly the
    bytes of the same request with that argument joined."""
    from wiretask._redis.client import Pieces, _request  # noqa: PLC0415

    plain = [tuple(c) for c in commands]
    which = data.draw(st.integers(0, len(plain) - 1))
    split = data.draw(st.binary(max_size=30))
    pieced = [*plain]
    pieced[which] = (*plain[which], Pieces((split[:5], memoryview(split[5:]))))
    joined = [*plain]
    joined[which] = (*plain[which], split)
    fast = _request(joined)
    assert isinstance(fast, bytes)
    assert b"".join(bytes(p) for p in _request(pieced)) == fast
    assert fast == b"".join(hiredis.pack_command(c) for c in joined)
    with pytest.raises(TypeError):
        _request([*plain, ("SET", "k", None)])


def test_the_shared_embed_is_never_changed() -> None:
    """``protocol.celery.encode`` hands one shared embed dict to the serializer for a
    message without callbacks, errbacks, chain or chord: encoding messages that have
    them, or ``extra_embed``, builds their own and leaves the shared one as it was."""
    from wiretask.codecs import default_registry  # noqa: PLC0415
    from wiretask.protocol import (  # noqa: PLC0415
        Signature,
        TaskMessage,
        celery,
    )

    registry = default_registry()
    before = dict(celery._NO_EMBED)
    plain = TaskMessage(task="t", id="1")
    for message in (plain, TaskMessage(task="t", id="2", extra_embed={"x-extra": 1}),
                    TaskMessage(task="t", id="3", callbacks=(Signature(task="cb"),))):
        frame = celery.encode(message, registry)
        assert celery.decode(frame, registry) == message
    assert before == celery._NO_EMBED


@given(st.lists(st.none() | st.floats(min_value=-1e10, max_value=4e9), max_size=4))
def test_needs_hold_is_any_message_not_due(dues: list[float | None]) -> None:
    """``needs_hold`` reads the clock only for a message with a due time, and answers
    what ``any(due > now)`` answers."""
    import time  # noqa: PLC0415

    from wiretask.protocol.frame import Frame, Route  # noqa: PLC0415
    from wiretask.transports.base import Prepared  # noqa: PLC0415
    from wiretask.transports.redis.publishing import needs_hold  # noqa: PLC0415

    frame = Frame(body=b"", content_type="application/json", content_encoding="utf-8")
    messages = [Prepared(frame, Route("q"), "q", 0, None, due) for due in dues]
    now = time.time()
    expected = any(due is not None and due > now + 1 for due in dues)
    if expected or all(due is None or due < now - 1 for due in dues):
        assert needs_hold(messages) is expected


def test_remembered_list_names_are_the_named_lists() -> None:
    """``Staging`` remembers each list's prefixed name (one dict read per publish): the
    name is ``keys.p(queue_key(queue, bucket))``, and the memory is bounded."""
    from wiretask._redis.keys import Keys  # noqa: PLC0415
    from wiretask.transports.redis import publishing  # noqa: PLC0415
    from wiretask.transports.redis.envelope import queue_key  # noqa: PLC0415

    keys = Keys(prefix="p:", unacked="u", unacked_index="ui", unacked_mutex="um",
                delayed="d", delayed_messages="dm")
    staging = publishing.Staging(keys, (0, 3, 6, 9), 0, visibility_timeout=60.0,
                                 markers=True)
    for queue in ("q", "other"):
        for bucket in (0, 3, 9):
            assert staging._list(queue, bucket) == keys.p(queue_key(queue, bucket))
            assert staging._lists[queue, bucket] == keys.p(queue_key(queue, bucket))
    for n in range(publishing._LISTS_LIMIT + 10):
        staging._list(f"q{n}", 0)
    assert len(staging._lists) <= publishing._LISTS_LIMIT


@pytest.mark.parametrize("label", ["application/json", "utf-8", "binary", "é/\u2028", 1, True,
                                   None, 1.5])
def test_remembered_label_text_is_json_dumps(label: Any) -> None:
    """The list entry's content labels are written from a memory of their JSON text
    (``lru_cache``, typed: ``True`` is not ``1``): what ``json.dumps`` writes."""
    import json  # noqa: PLC0415

    from wiretask.transports.redis.envelope import _string_text  # noqa: PLC0415

    assert _string_text(label) == json.dumps(label)
    assert _string_text(label) == json.dumps(label)  # the second, remembered
