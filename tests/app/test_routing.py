"""``task_routes``, ``task_queues`` and the default queue, resolved as Celery's router
does, and what lands on the broker (memory, and Redis with exchange bindings)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from kombu import Exchange, Queue

from wiretask import App
from wiretask.errors import ImproperlyConfigured
from wiretask.routing import QueueNotFound, Router
from wiretask.worker import Worker

from .conftest import MakeApp, StartWorker, received

#: The module holding the routers given by dotted path (as this package is imported).
ROUTERS = f"{__name__.rpartition('.')[0]}.routers"


def route(app: App, name: str, args: Any = (), **options: Any) -> tuple[str, str, str | None]:
    call = app.build_call(name, args, **options)
    return call.route.queue, call.route.exchange, call.route.routing_key


def test_dict_routes_with_exact_glob_and_regex_keys(make_app: MakeApp) -> None:
    app = make_app(task_routes={
        "proj.tasks.add": {"queue": "math"},
        "proj.video.*": "video",
        re.compile(r"proj\.(image|pdf)\..*"): {"queue": "media", "priority": 7},
    })
    assert route(app, "proj.tasks.add") == ("math", "", None)
    assert route(app, "proj.video.encode") == ("video", "", None)
    call = app.build_call("proj.image.resize")
    assert (call.route.queue, call.message.priority) == ("media", 7)
    assert route(app, "proj.other") == ("celery", "", None)
    app.send_task("proj.video.encode", (1,))
    assert received(app, "video").args == (1,)


def test_a_list_of_routers_first_answer_wins(make_app: MakeApp) -> None:
    app = make_app(task_routes=[
        f"{ROUTERS}.by_first_argument",
        {"proj.resize": "fallback", "*": {"queue": "default-route"}},
        f"{ROUTERS}.OldStyle",
    ])
    assert route(app, "proj.resize", ("png",)) == ("images-png", "", None)
    assert route(app, "proj.resize") == ("fallback", "", None)
    assert route(app, "proj.anything") == ("default-route", "", None)

    def function_router(name: str, args: Any, kwargs: Any, options: Any,
                        task: Any = None) -> Any:
        return "by-function" if name == "proj.f" else None

    app.conf.task_routes = (function_router, f"{ROUTERS}.OldStyle")
    assert route(app, "proj.f") == ("by-function", "", None)
    assert route(app, "proj.old") == ("legacy", "", None)


def test_the_call_and_the_task_win_over_the_route(app: App) -> None:
    app.conf.task_routes = {"proj.*": {"queue": "routed", "priority": 5}}

    @app.task(name="proj.pinned", queue="pinned")
    def pinned() -> None:
        return None

    assert route(app, "proj.x") == ("routed", "", None)
    assert route(app, "proj.x", queue="explicit") == ("explicit", "", None)
    assert app.build_call("proj.x", priority=1).message.priority == 1
    assert route(app, "proj.pinned") == ("pinned", "", None)


def test_per_call_routers_see_each_calls_arguments(make_app: MakeApp) -> None:
    app = make_app(task_routes=[f"{ROUTERS}.by_first_argument"])

    @app.task(name="proj.resize")
    def resize(kind: str) -> None:
        return None

    resize.apply_many([("png",), ("gif",)])
    assert received(app, "images-png").args == ("png",)
    assert received(app, "images-gif").args == ("gif",)


def test_task_queues_from_kombu_objects_and_dicts(make_app: MakeApp) -> None:
    media = Exchange("media", type="topic")
    app = make_app(task_queues=[
        Queue("default", Exchange("default"), routing_key="default"),
        Queue("videos", media, routing_key="media.video.#", max_priority=10),
    ])
    router = app.router
    assert router.consume_from == ["default", "videos"]
    videos = router.queues["videos"]
    assert (videos.exchange.name, videos.exchange.type) == ("media", "topic")
    assert videos.routing_key == "media.video.#"
    assert videos.arguments == {"x-max-priority": 10}
    # A topic queue: published to its exchange with the call's routing key.
    assert route(app, "t", queue="videos", routing_key="media.video.compress") == (
        "videos", "media", "media.video.compress")
    assert route(app, "t", queue="videos") == ("videos", "media", "media.video.#")
    # A direct queue: the default exchange, keyed by the queue's name (Celery drops the key).
    assert route(app, "t", queue="default", routing_key="ignored") == ("default", "", None)
    # An explicit exchange and key are sent as given.
    assert route(app, "t", exchange="elsewhere", routing_key="k") == ("celery", "elsewhere", "k")

    dicts = make_app(task_queues={
        "feeds": {"exchange": "feeds", "routing_key": "feed.#", "exchange_type": "topic"},
        "plain": {},
    }, task_queue_max_priority=5)
    feeds = dicts.router.queues["feeds"]
    assert (feeds.exchange.type, feeds.routing_key, feeds.arguments) == (
        "topic", "feed.#", {"x-max-priority": 5})
    assert dicts.router.queues["plain"].routing_key == "plain"


def test_bad_queue_declarations_are_refused_by_name(make_app: MakeApp) -> None:
    with pytest.raises(ImproperlyConfigured, match="fanout"):
        make_app(task_queues=[Queue("bcast", Exchange("bcast", type="fanout"))])
    with pytest.raises(ImproperlyConfigured, match="unknown queue option 'exchnage'"):
        make_app(task_queues={"q": {"exchnage": "x"}})
    with pytest.raises(ImproperlyConfigured, match="task_routes"):
        make_app(task_routes=[42])


def test_missing_queues_are_created_or_refused(make_app: MakeApp) -> None:
    app = make_app(task_queues=[Queue("known")], task_create_missing_queues=False)
    assert route(app, "t", queue="known") == ("known", "", None)
    with pytest.raises(QueueNotFound, match="'unknown' missing from task_queues"):
        app.send_task("t", queue="unknown")
    with pytest.raises(QueueNotFound):
        app.send_task("t")  # the default queue 'celery' is not declared either
    app.conf.task_create_missing_queues = True
    assert route(app, "t", queue="unknown") == ("unknown", "", None)


def test_default_queue_exchange_and_routing_key_settings(make_app: MakeApp) -> None:
    app = make_app(task_default_queue="jobs", task_default_exchange="tasks",
                   task_default_exchange_type="topic", task_default_routing_key="task.default")
    default = app.router.queues["jobs"]
    assert (default.exchange.name, default.exchange.type, default.routing_key) == (
        "tasks", "topic", "task.default")
    assert route(app, "t") == ("jobs", "tasks", "task.default")
    assert route(app, "t", routing_key="task.urgent") == ("jobs", "tasks", "task.urgent")
    plain = make_app(task_default_exchange="tasks")  # direct: the default exchange is used
    assert route(plain, "t") == ("celery", "", None)
    assert Router(plain.conf).trivial


def test_topic_routing_reaches_the_bound_queue_on_redis(
    make_app: MakeApp, redis_url: str
) -> None:
    media = Exchange("media", type="topic")
    app = make_app(broker=redis_url, backend=redis_url, task_queues=[
        Queue("videos", media, routing_key="media.video.#"),
        Queue("images", media, routing_key="media.image.#"),
    ], task_routes={"proj.encode": {"queue": "videos", "routing_key": "media.video.h264"}})
    app.send_task("proj.encode", (1,))
    app.send_task("proj.thumb", (2,), queue="images", routing_key="media.image.small")
    assert received(app, "videos").args == (1,)
    assert received(app, "images").args == (2,)
    assert app.transport.size("celery") == 0


def test_a_routed_task_runs_on_a_worker_consuming_the_declared_queues(
    make_app: MakeApp, start_worker: StartWorker
) -> None:
    app = make_app(task_queues=[Queue("math"), Queue("io")],
                   task_routes={"proj.add": "math"})

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    worker: Worker = start_worker(app, queues=app.router.consume_from)
    assert worker.queues == ["math", "io"]
    assert add.delay(2, 3).get(timeout=10) == 5


def test_a_kombu_queue_can_be_given_per_call(app: App) -> None:
    assert route(app, "t", queue=Queue("adhoc")) == ("adhoc", "", None)
    topic = Queue("news", Exchange("feeds", type="topic"), routing_key="news.#")
    assert route(app, "t", queue=topic, routing_key="news.sport") == (
        "news", "feeds", "news.sport")
