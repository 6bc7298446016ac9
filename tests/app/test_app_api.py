"""The app API a Celery project uses: include/imports and autodiscover_tasks imported
when the app is finalized, shared_task bound to the current app, finalize, app.conf,
and the transport and backend options that pass through."""

from __future__ import annotations

import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from wiretask import App
from wiretask.app import current_app, shared_task
from wiretask.errors import ImproperlyConfigured, ValidationError

from .conftest import MakeApp, StartWorker


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh importable package name (removed from sys.modules afterwards)."""
    name = f"pkg_{uuid.uuid4().hex[:10]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


def write(package: str, tmp_path: Path, module: str, source: str) -> None:
    path = tmp_path / package / f"{module.replace('.', '/')}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent != tmp_path / package:
        (path.parent / "__init__.py").touch()
    path.write_text(textwrap.dedent(source).replace("PKG", package))


def test_include_is_imported_when_the_app_is_finalized(
    package: str, tmp_path: Path, start_worker: StartWorker
) -> None:
    broker = f"memory://{package}"
    write(package, tmp_path, "celery", f"""
        from wiretask import App
        app = App("PKG", broker="{broker}", backend="{broker}", include=["PKG.tasks"],
                  imports=("PKG.extra",))
    """)
    write(package, tmp_path, "tasks", """
        from PKG.celery import app

        @app.task
        def add(x, y):
            return x + y
    """)
    write(package, tmp_path, "extra", "LOADED = True\n")
    module = __import__(f"{package}.celery", fromlist=["app"])
    app: App = module.app
    assert f"{package}.tasks" not in sys.modules and not app.finalized
    assert f"{package}.tasks.add" in app.tasks  # first use finalizes
    assert app.finalized and f"{package}.extra" in sys.modules
    start_worker(app)
    assert app.send_task(f"{package}.tasks.add", (2, 3)).get(timeout=10) == 5
    app.close()


def test_a_broken_include_raises_and_leaves_the_app_unfinalized(
    package: str, tmp_path: Path, make_app: MakeApp
) -> None:
    app = make_app(include=[f"{package}.missing"])
    with pytest.raises(ModuleNotFoundError):
        _ = app.tasks
    assert not app.finalized
    app.conf.include = ()
    _ = app.tasks  # finalizing is tried again, and now succeeds
    assert app.finalized


def test_autodiscover_is_lazy_and_finds_the_related_modules(
    package: str, tmp_path: Path, make_app: MakeApp
) -> None:
    app = make_app()
    for sub in ("orders", "billing"):
        write(package, tmp_path, f"{sub}/__init__", "")
        write(package, tmp_path, f"{sub}/tasks", f"""
            from wiretask.app import current_app

            @current_app().task(name="{sub}.ping")
            def ping():
                return "{sub}"
        """)
    write(package, tmp_path, "static/__init__", "")  # no tasks module: skipped
    write(package, tmp_path, "jobs/__init__", "")
    write(package, tmp_path, "jobs/cron", """
        from wiretask.app import current_app

        @current_app().task(name="jobs.cron")
        def cron():
            return "cron"
    """)
    asked: list[bool] = []

    def packages() -> list[str]:
        asked.append(True)
        return [f"{package}.orders", f"{package}.billing", f"{package}.static"]

    app.autodiscover_tasks(packages)
    app.autodiscover_tasks([f"{package}.jobs"], related_name="cron")
    assert asked == [] and f"{package}.orders.tasks" not in sys.modules
    app.finalize()
    assert asked == [True]
    assert {"orders.ping", "billing.ping", "jobs.cron"} <= set(app.tasks)
    write(package, tmp_path, "broken/__init__", "")
    write(package, tmp_path, "broken/tasks", "import does_not_exist_anywhere\n")
    with pytest.raises(ModuleNotFoundError, match="does_not_exist_anywhere"):
        app.autodiscover_tasks([f"{package}.broken"])  # finalized: at once, and loudly


def test_autodiscover_without_packages_needs_django(make_app: MakeApp) -> None:
    app = make_app()
    app.autodiscover_tasks(force=False)
    with pytest.raises(ImproperlyConfigured, match="Django"):
        app.finalize()


def test_shared_task_is_the_current_apps_task(make_app: MakeApp) -> None:
    first = make_app("first")

    @shared_task(name=f"shared.mul.{uuid.uuid4().hex}")
    def mul(x: int, y: int) -> int:
        return x * y

    assert mul(6, 7) == 42
    assert current_app() is first
    assert mul.resolve() is first.tasks[mul.options["name"]]
    assert mul.name == mul.options["name"]  # attributes are the current app's task's
    second = make_app("second")
    assert current_app() is second
    assert mul.resolve() is second.tasks[mul.options["name"]]
    assert mul.resolve(first) is not mul.resolve(second)
    result = mul.delay(2, 3)
    assert result.app is second
    assert second.transport.size("celery") == 1 and first.transport.size("celery") == 0


def test_shared_task_registers_in_every_finalized_app(make_app: MakeApp) -> None:
    done = make_app("done")
    done.finalize()
    quiet = make_app("quiet", set_as_current=False)
    name = f"shared.echo.{uuid.uuid4().hex}"

    @shared_task(name=name)
    def echo(value: Any) -> Any:
        return value

    assert name in done._tasks  # registered at once: the app was finalized
    assert name not in quiet._tasks  # not yet: it is when it finalizes
    assert name in quiet.tasks
    with pytest.raises(ValidationError, match="did you mean 'autoretry_for'"):
        shared_task(autoretry_fro=(KeyError,))


def test_autofinalize_off_needs_an_explicit_finalize(make_app: MakeApp) -> None:
    app = make_app(autofinalize=False)
    with pytest.raises(RuntimeError, match="finalize"):
        _ = app.tasks
    app.finalize()
    assert app.finalized

    @app.task
    def later() -> None:
        return None

    assert app.tasks[later.name] is later


def test_conf_update_and_attribute_access(make_app: MakeApp) -> None:
    app = make_app()
    app.conf.update(task_default_queue="jobs", result_expires=60)
    assert app.conf.task_default_queue == "jobs" and app.conf["result_expires"] == 60
    app.conf.task_serializer = "msgpack"
    assert app.build_call("t").message.content_type == "application/x-msgpack"
    assert app.build_call("t").route.queue == "jobs"


def test_config_from_envvar(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch,
                            package: str, tmp_path: Path) -> None:
    write(package, tmp_path, "settings", "task_default_queue = 'from-env'\n")
    monkeypatch.setenv("PROJ_SETTINGS", f"{package}.settings")
    app = make_app()
    assert app.config_from_envvar("PROJ_SETTINGS")
    assert app.conf.task_default_queue == "from-env"
    monkeypatch.delenv("PROJ_SETTINGS")
    assert app.config_from_envvar("PROJ_SETTINGS", silent=True) is False
    with pytest.raises(ImproperlyConfigured, match="PROJ_SETTINGS"):
        app.config_from_envvar("PROJ_SETTINGS")


def test_broker_transport_options_reach_the_transport(tmp_path: Path, redis_url: str) -> None:
    sqlite = App("proj", broker=f"sqlite:///{tmp_path / 'b.db'}",
                 broker_transport_options={"visibility_timeout": 12.5})
    assert sqlite.transport.capabilities.visibility_timeout == 12.5
    redis_app = App("proj", broker=redis_url, broker_transport_options={
        "visibility_timeout": 99, "global_keyprefix": "tenant1:"})
    assert redis_app.transport.capabilities.visibility_timeout == 99
    redis_app.send_task("t", (1,))
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen("tenant1:celery") == 1
    finally:
        client.close()
    redis_app.close()
    with pytest.raises(ImproperlyConfigured, match="queue_order_strategy"):
        _ = App("proj", broker=redis_url,
                broker_transport_options={"queue_order_strategy": "priority"}).transport
    with pytest.raises(ImproperlyConfigured, match="visiblity_timeout"):
        _ = App("proj", broker=f"sqlite:///{tmp_path / 'c.db'}",
                broker_transport_options={"visiblity_timeout": 1}).transport


def test_result_settings_reach_the_backend(make_app: MakeApp, redis_url: str) -> None:
    app = make_app(backend=redis_url, result_compression="zlib",
                   result_backend_transport_options={"global_keyprefix": "res:"},
                   result_accept_content=["json"])
    app.backend.store("x", {"task_id": "x", "status": "SUCCESS", "result": "r" * 2000,
                            "traceback": None, "children": [], "date_done": None})
    client = redis.Redis.from_url(redis_url)
    try:
        stored = client.get("res:celery-task-meta-x")
    finally:
        client.close()
    assert isinstance(stored, bytes) and stored.startswith(b"\x00celery-compressed\x00")
    assert app.AsyncResult("x").get(timeout=1) == "r" * 2000


def test_an_app_subclass_can_name_tasks_its_way() -> None:
    class Short(App):
        def gen_task_name(self, name: str, module: str) -> str:
            return f"short.{name.rpartition('.')[2]}"

    app = Short("proj", broker="memory://short", backend="memory://short")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == "short.add"
    assert App("proj").gen_task_name("add", "__main__") == "proj.add"


def test_other_threads_wait_for_finalizing_to_finish(
    package: str, tmp_path: Path, make_app: MakeApp
) -> None:
    app = make_app(include=[f"{package}.slow"])
    write(package, tmp_path, "slow", """
        import time
        from wiretask.app import current_app

        time.sleep(0.3)

        @current_app().task(name="PKG.late")
        def late():
            return None
    """)
    seen: list[bool] = []
    first = threading.Thread(target=lambda: app.tasks)
    first.start()
    time.sleep(0.1)  # the first thread is importing the slow module now
    seen.append(f"{package}.late" in app.tasks)
    first.join(10)
    assert seen == [True]
