"""The single-call send path (``apply_async``/``delay``/``send_task``: ``App._build_one``,
``CallBuilder.build``, a frame published alone) and the general batch path
(``apply_many``: ``CallBuilder.build_many``, ``publish_many``) write the same bytes for
the same call: the Redis list entries of each call are compared byte for byte, with the
random parts (task ids, delivery tags) and the clocks fixed."""

from __future__ import annotations

import itertools
import time
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wiretask import App
from wiretask.calling import CallBuilder
from wiretask.transports.redis import publishing

NOW = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
QUEUE = "paths"

texts = st.text(st.sampled_from("az09 _.-\"\\\x00\x7féü☃值😀"), max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
kwargs_dicts = st.dictionaries(texts, values, max_size=3)

options = st.fixed_dictionaries({}, optional={
    "countdown": st.integers(min_value=0, max_value=3600),
    "expires": st.integers(min_value=1, max_value=3600),
    "priority": st.integers(min_value=0, max_value=9),
    "serializer": st.sampled_from(["json", "msgpack"]),
    "compression": st.sampled_from(["gzip", "zlib"]),
    "headers": st.dictionaries(st.sampled_from(["x-a", "x-b"]),
                               st.none() | st.integers() | texts, max_size=2),
    "shadow": st.sampled_from(["shown", "other.name"]),
    "time_limit": st.integers(min_value=1, max_value=60),
    "soft_time_limit": st.floats(min_value=0.5, max_value=30),
    "ignore_result": st.booleans(),
    "retries": st.integers(min_value=0, max_value=5),
    "link": st.just({"task": "t.callback", "args": [1], "kwargs": {}, "options": {},
                     "subtask_type": None, "immutable": False}),
    "argsrepr": st.sampled_from(["<args>", "(1,)"]),
})
calls = st.lists(st.tuples(st.lists(values, max_size=3).map(tuple), kwargs_dicts),
                 min_size=1, max_size=3)


class Fixed:
    """Task ids, delivery tags and publish times from counters, the same for each path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reset()
        monkeypatch.setitem(CallBuilder.build.__kwdefaults__, "new_id", self.task_id)
        monkeypatch.setitem(CallBuilder.build_many.__kwdefaults__, "new_id", self.task_id)
        monkeypatch.setattr(publishing, "new_id", self.tag)
        monkeypatch.setattr(publishing, "new_ids", lambda n: [self.tag() for _ in range(n)])
        monkeypatch.setattr(publishing, "time", types.SimpleNamespace(
            time=lambda: 1_796_000_000.25, monotonic=time.monotonic))

    def reset(self) -> None:
        self._ids = itertools.count()
        self._tags = itertools.count()

    def task_id(self) -> str:
        return f"task-{next(self._ids)}"

    def tag(self) -> str:
        return f"tag-{next(self._tags)}"


@pytest.fixture
def paths(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[App, Fixed]]:
    app = App("paths", broker=redis_url, backend=redis_url, task_default_queue=QUEUE,
              clock=lambda: NOW)
    try:
        yield app, Fixed(monkeypatch)
    finally:
        app.close()


def _drain(url: str) -> dict[bytes, Any]:
    """What the sends left in the database, by type, and removed: every key but the
    publish markers (one per attempt: a batch has one, single calls one each; removed)
    and the queue's binding (declared once per app; kept)."""
    client = redis.Redis.from_url(url)
    try:
        kept: dict[bytes, Any] = {}
        for key in sorted(client.keys()):
            kind = client.type(key)
            if kind == b"list":
                value: Any = client.lrange(key, 0, -1)
            elif kind == b"hash":
                value = sorted(client.hgetall(key).items())
            elif kind == b"zset":
                value = client.zrange(key, 0, -1, withscores=True)
            else:
                value = (kind, client.dump(key))
            if key.startswith(b"_kombu.binding"):
                continue
            client.delete(key)
            if key.startswith(b"_wiretask.published."):
                continue
            kept[key] = value
        return kept
    finally:
        client.close()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=calls, options=options)
def test_one_call_writes_what_a_batch_writes(
    paths: tuple[App, Fixed], redis_url: str, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    options: dict[str, Any],
) -> None:
    app, fixed = paths

    @app.task(name="t.paths")
    def task(*args: Any, **kwargs: Any) -> None:
        del args, kwargs

    fixed.reset()
    for args, kwargs in calls:
        task.apply_async(args, kwargs, **options)
    one_by_one = _drain(redis_url)
    fixed.reset()
    task.apply_many(calls, **options)
    batched = _drain(redis_url)
    fixed.reset()
    for args, kwargs in calls:
        app.send_task("t.paths", args, kwargs, **options)
    by_name = _drain(redis_url)
    assert one_by_one  # the calls were sent
    assert one_by_one == batched == by_name
    # The single path's build is the batch's: the same messages, field by field.
    fixed.reset()
    single = [app.build_call("t.paths", args, kwargs, **options) for args, kwargs in calls]
    fixed.reset()
    assert single == app.build_many("t.paths", calls, **options)
