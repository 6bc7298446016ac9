"""Every Celery 5.7 setting has a status in wiretask, and every way of setting one is
checked: an unknown, old-style, refused or unsupported-value setting raises at once,
naming it."""

from __future__ import annotations

import types
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.app import defaults as celery_defaults

from wiretask import App
from wiretask.config import (
    HONOURED,
    NOT_APPLICABLE,
    OLD_NAMES,
    REFUSED,
    SETTINGS,
    Configuration,
    check_setting,
    read_object,
    render_markdown,
)
from wiretask.errors import ImproperlyConfigured

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def celery_settings() -> set[str]:
    return {name for name, _ in celery_defaults.flatten(celery_defaults.NAMESPACES)}


def memory_app(**settings: Any) -> App:
    url = f"memory://settings-{uuid.uuid4().hex}"
    return App("proj", broker=url, backend=url, **settings)


def test_every_celery_setting_has_a_status_and_no_other_claims_to_be_celerys() -> None:
    ours = {name for name, row in SETTINGS.items() if row.celery}
    assert celery_settings() - ours == set(), "Celery settings missing from the table"
    assert ours - celery_settings() == set(), "rows marked as Celery's that Celery lacks"
    for row in SETTINGS.values():
        assert row.status in (HONOURED, REFUSED, NOT_APPLICABLE)
        if row.status != HONOURED:
            assert row.note, f"{row.name}: a refused or n/a setting says why"


def test_old_names_are_celerys() -> None:
    assert dict(OLD_NAMES) == dict(celery_defaults._TO_NEW_KEY)


def test_the_published_table_is_current() -> None:
    assert DOC.read_text() == render_markdown(), (
        "docs/settings.md is stale: regenerate it with "
        "python -c 'from wiretask.config import render_markdown; "
        "open(\"docs/settings.md\", \"w\").write(render_markdown())'"
    )
    for name in celery_settings():
        assert f"| `{name}` |" in DOC.read_text()


def _setitem(conf: Configuration, name: str, value: Any) -> None:
    conf[name] = value


def _setdefault(conf: Configuration, name: str, value: Any) -> None:
    conf.setdefault(name, value)


SETTERS: dict[str, Callable[[str, Any], None]] = {
    "App(**kw)": lambda name, value: memory_app(**{name: value}).close(),
    "conf[...]": lambda name, value: _setitem(memory_app().conf, name, value),
    "conf.update": lambda name, value: memory_app().conf.update({name: value}),
    "attribute": lambda name, value: setattr(memory_app().conf, name, value),
    "config_from_object": lambda name, value: memory_app().config_from_object(
        types.SimpleNamespace(**{name: value})
    ),
    "setdefault": lambda name, value: _setdefault(memory_app().conf, name, value),
}


@pytest.mark.parametrize("how", list(SETTERS))
def test_a_misspelt_setting_is_refused_with_the_nearest_name(how: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="task_serialzer") as info:
        SETTERS[how]("task_serialzer", "json")
    assert "did you mean 'task_serializer'?" in str(info.value)
    assert info.value.setting == "task_serialzer"


@pytest.mark.parametrize("how", list(SETTERS))
def test_an_old_upper_case_name_is_refused_with_the_new_one(how: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="CELERY_TASK_SERIALIZER") as info:
        SETTERS[how]("CELERY_TASK_SERIALIZER", "json")
    assert "use 'task_serializer'" in str(info.value)
    with pytest.raises(ImproperlyConfigured, match="use 'broker_url'"):
        SETTERS[how]("BROKER_URL", "memory://")


@pytest.mark.parametrize("how", list(SETTERS))
def test_a_refused_setting_says_why(how: str) -> None:
    # (worker_prefetch_multiplier was the example until the worker honoured it.)
    with pytest.raises(ImproperlyConfigured, match="worker_direct") as info:
        SETTERS[how]("worker_direct", True)
    assert "not supported by wiretask" in str(info.value)
    assert SETTINGS["worker_direct"].note in str(info.value)


def test_a_value_wiretask_cannot_honour_is_refused_by_name() -> None:
    app = memory_app()
    app.conf.task_acks_late = True  # what wiretask's worker does
    with pytest.raises(ImproperlyConfigured, match=r"task_acks_late=False") as info:
        app.conf.task_acks_late = False
    assert "after its task ran" in str(info.value)
    with pytest.raises(ImproperlyConfigured, match="task_protocol=1"):
        memory_app(task_protocol=1)
    with pytest.raises(ImproperlyConfigured, match="task_always_eager must be True or False"):
        app.conf.task_always_eager = "yes"
    with pytest.raises(ImproperlyConfigured, match="fanout"):
        app.conf.task_default_exchange_type = "fanout"


def test_not_applicable_settings_are_accepted_and_documented() -> None:
    app = memory_app(broker_pool_limit=20, cassandra_servers=["db1"])
    assert app.conf.broker_pool_limit == 20
    assert SETTINGS["broker_pool_limit"].status == NOT_APPLICABLE
    assert app.conf.result_cache_max == -1  # never set: the documented default


def test_reading_a_refused_or_unknown_setting_names_it() -> None:
    conf = Configuration()
    with pytest.raises(AttributeError, match=r"broker_read_url.*one broker URL"):
        _ = conf.broker_read_url
    with pytest.raises(AttributeError, match="did you mean 'task_routes'"):
        _ = conf.task_rotues
    assert conf.get("worker_direct") is None  # dict reads stay plain


def test_values_are_checked_and_normalised() -> None:
    assert check_setting("result_expires", timedelta(hours=1)) == 3600.0
    assert check_setting("include", "proj.tasks") == ("proj.tasks",)
    with pytest.raises(ImproperlyConfigured, match="include"):
        check_setting("include", [1])
    with pytest.raises(ImproperlyConfigured, match="broker_transport_options"):
        check_setting("broker_transport_options", ["visibility_timeout"])
    with pytest.raises(ImproperlyConfigured, match="worker_concurrency"):
        check_setting("worker_concurrency", 0)


def test_celery_constructor_arguments_wiretask_does_not_take_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"App\(loader=\.\.\.\)"):
        App("proj", loader="celery.loaders.app:AppLoader")
    with pytest.raises(ImproperlyConfigured, match=r"App\(fixups=\.\.\.\)"):
        App("proj", fixups=[])


# -- config_from_object -------------------------------------------------------------------------

CONFIG_MODULE = '''
from datetime import timedelta
import os

from kombu import Queue

task_serializer = "msgpack"
result_expires = timedelta(minutes=5)
task_queues = (Queue("video"),)
ANSWER = 42  # an upper-case constant that is not a setting


def helper():
    return None
'''


def test_config_from_object_reads_a_module_by_path_and_skips_its_helpers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"celeryconfig_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(CONFIG_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    app = memory_app()
    assert app.config_from_object(name) is True
    assert app.conf.task_serializer == "msgpack"
    assert app.conf.result_expires == 300.0
    assert "ANSWER" not in app.conf and "helper" not in app.conf and "os" not in app.conf
    assert app.router.consume_from == ["video"]
    assert app.config_from_object(f"missing_{name}", silent=True) is False
    with pytest.raises(ImportError):
        app.config_from_object(f"missing_{name}")


def test_config_from_object_reads_a_class_and_refuses_what_it_must() -> None:
    class Config:
        task_default_queue = "jobs"
        task_serialzer = "json"

    app = memory_app()
    with pytest.raises(ImproperlyConfigured, match="did you mean 'task_serializer'"):
        app.config_from_object(Config)

    class Good:
        task_default_queue = "jobs"

    app.config_from_object(Good)
    assert app.conf.task_default_queue == "jobs"


def test_config_from_object_with_djangos_namespace() -> None:
    settings = types.SimpleNamespace(
        CELERY_BROKER_URL="memory://django", CELERY_TASK_ALWAYS_EAGER=True,
        CELERY_RESULT_EXPIRES=60, DEBUG=True, INSTALLED_APPS=["polls"],
        SECRET_KEY="not a setting",
    )
    app = App("proj", namespace="CELERY")
    app.config_from_object(settings)
    assert app.broker_url == "memory://django"
    assert app.conf.task_always_eager is True
    assert app.conf.result_expires == 60
    assert "debug" not in app.conf and "DEBUG" not in app.conf
    bad = types.SimpleNamespace(CELERY_TASK_SERIALZER="json")
    with pytest.raises(ImproperlyConfigured, match="did you mean 'task_serializer'"):
        App("proj").config_from_object(bad, namespace="CELERY")


def test_read_object_keeps_misspelt_celery_names_for_the_check() -> None:
    found = read_object(types.SimpleNamespace(CELERY_TASK_SERIALZER="json", ANSWER=1))
    assert found == {"CELERY_TASK_SERIALZER": "json"}
    with pytest.raises(ImproperlyConfigured, match="did you mean 'task_serializer'"):
        memory_app().conf.update(found)


def test_constructor_settings_beat_a_configuration_object() -> None:
    app = App("proj", broker="memory://given", task_default_queue="given")
    app.config_from_object({"broker_url": "memory://file", "task_default_queue": "file",
                            "result_expires": 10})
    assert (app.broker_url, app.conf.task_default_queue) == ("memory://given", "given")
    assert app.conf.result_expires == 10
    app.conf.task_default_queue = "changed"  # a later change is a change
    assert app.conf.task_default_queue == "changed"
    with pytest.raises(ImproperlyConfigured, match="did you mean"):
        app.config_from_object({"broker_urll": "memory://x"})
