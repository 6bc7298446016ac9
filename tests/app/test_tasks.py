"""Task options through the public API: checked by name when the task is made,
``autoretry_for`` and its friends run by a real worker, ``base=`` classes, class-based
tasks and ``task_annotations``."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery import Task as CeleryTask

from wiretask import App, Task
from wiretask.errors import ImproperlyConfigured, MaxRetriesExceededError, ValidationError
from wiretask.protocol import states
from wiretask.tasks import TASK_OPTIONS, backoff, parse_rate

from .conftest import MakeApp, StartWorker, received


def test_autoretry_for_imports_and_retries_until_success(
    app: App, start_worker: StartWorker
) -> None:
    tries: list[int] = []

    @app.task(bind=True, autoretry_for=(ConnectionError,), retry_kwargs={"countdown": 0.05},
              max_retries=5)
    def flaky(self: Any, x: int) -> int:
        tries.append(self.request.retries)
        if len(tries) < 3:
            raise ConnectionError("down")
        return x * 2

    start_worker(app)
    seen: list[str] = []
    assert flaky.delay(21).get(timeout=10, on_message=lambda m: seen.append(m["status"])) == 42
    assert tries == [0, 1, 2]
    assert seen == [states.RETRY, states.RETRY, states.SUCCESS]


def test_autoretry_gives_up_with_the_exception_and_skips_dont_autoretry_for(
    app: App, start_worker: StartWorker
) -> None:
    calls: list[str] = []

    @app.task(autoretry_for=(OSError,), dont_autoretry_for=(FileNotFoundError,),
              max_retries=1, default_retry_delay=0.01)
    def fails(kind: str) -> None:
        calls.append(kind)
        if kind == "missing":
            raise FileNotFoundError("no such file")
        raise OSError("down")

    start_worker(app)
    with pytest.raises(OSError, match="down"):
        fails.delay("down").get(timeout=10)
    assert calls.count("down") == 2  # the first run and one retry
    with pytest.raises(FileNotFoundError):
        fails.delay("missing").get(timeout=10)
    assert calls.count("missing") == 1


def test_retry_past_max_retries_without_exc_raises_max_retries_exceeded(
    app: App, start_worker: StartWorker
) -> None:
    @app.task(bind=True, max_retries=1)
    def again(self: Any) -> None:
        raise self.retry(countdown=0.01)

    start_worker(app)
    with pytest.raises(MaxRetriesExceededError, match=r"Can't retry .*again"):
        again.delay().get(timeout=10)
    assert Task.MaxRetriesExceededError is MaxRetriesExceededError


def test_retry_backoff_follows_celerys_formula(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [backoff(2, n, 600, full_jitter=False) for n in range(4)] == [2, 4, 8, 16]
    assert backoff(2, 10, 600, full_jitter=False) == 600
    assert backoff(3, 2, 600, full_jitter=True, randrange=lambda n: n - 1) == 12

    @app.task(autoretry_for=(KeyError,), retry_backoff=2, retry_backoff_max=5,
              retry_jitter=False)
    def backs_off() -> None:
        raise KeyError("x")

    countdowns: list[Any] = []

    def fake_retry(*args: Any, **kwargs: Any) -> Exception:
        countdowns.append(kwargs.get("countdown"))
        return RuntimeError("retried")

    monkeypatch.setattr(backs_off, "retry", fake_retry)
    with pytest.raises(RuntimeError, match="retried"):
        backs_off()
    assert countdowns == [2]  # factor 2, no retries yet, no jitter


def test_misspelt_and_unknown_task_options_are_refused_with_a_suggestion(app: App) -> None:
    with pytest.raises(ValidationError, match="did you mean 'autoretry_for'") as info:
        app.task(autoretry_fro=(KeyError,))
    assert info.value.field == "autoretry_fro"
    with pytest.raises(ValidationError, match="did you mean 'countdown'"):
        app.send_task("t", countdwn=1)
    with pytest.raises(ValidationError, match="retry_kwargs: 'countdwn' is not a retry"):
        app.task(retry_kwargs={"countdwn": 1})


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("acks_late", False, "after its task ran"),
        # (reject_on_worker_lost was refused here until the worker honoured it.)
        ("retry_on_worker_lost", True, "retrying it as retry"),
        ("reject_on_worker_lost", "yes", "True or False"),
        # (send_events was refused here until the worker sent task events.)
        ("send_events", "no", "True or False"),
        ("pydantic", True, "pydantic"),
        ("autoretry_for", "OSError", "tuple of exception classes"),
        ("rate_limit", "ten per minute", "rate like"),
        ("max_retries", -1, "integer >= 0"),
    ],
)
def test_options_wiretask_cannot_honour_are_refused_by_name(
    app: App, option: str, value: Any, reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason) as info:
        app.task(**{option: value})
    assert info.value.field == option


def test_every_celery_task_option_is_in_the_table() -> None:
    celery_options = {
        "name", "typing", "max_retries", "default_retry_delay", "rate_limit",
        "ignore_result", "trail", "send_events", "store_errors_even_if_ignored",
        "serializer", "time_limit", "soft_time_limit", "backend", "track_started",
        "acks_late", "acks_on_failure_or_timeout", "acks_on_failure", "acks_on_timeout",
        "reject_on_worker_lost", "throws", "expires", "priority", "resultrepr_maxsize",
    }
    assert celery_options <= set(vars(CeleryTask)), "the list above is Celery's"
    # The options Celery fills from settings, and the ones its autoretry wrapper reads.
    celery_options |= {name for name, _ in CeleryTask.from_config}
    celery_options |= {"autoretry_for", "dont_autoretry_for", "retry_kwargs", "retry_backoff",
                       "retry_backoff_max", "retry_jitter"}
    assert celery_options - set(TASK_OPTIONS) == set()


def test_rate_limits_are_parsed_and_stored(app: App, caplog: pytest.LogCaptureFixture) -> None:
    assert parse_rate("10/m") == pytest.approx(10 / 60)
    assert parse_rate("100/h") == pytest.approx(100 / 3600)
    assert parse_rate("5/s") == parse_rate("5") == parse_rate(5) == 5.0
    assert parse_rate(None) is parse_rate(0) is None
    for bad in ("10/d", "x/s", "-1/s", True):
        with pytest.raises(ValidationError, match="rate_limit"):
            parse_rate(bad)
    with caplog.at_level(logging.WARNING, logger="wiretask.app"):

        @app.task(rate_limit="30/m")
        def limited() -> None:
            return None

    assert limited.rate_limit == "30/m"
    assert limited.rate == pytest.approx(0.5)
    # The worker enforces it now (tests/worker/test_worker_settings.py): no warning.
    assert "does not enforce rate limits" not in caplog.text


def test_task_options_become_call_defaults(app: App) -> None:
    @app.task(queue="slow", priority=3, time_limit=60, soft_time_limit=50, serializer="msgpack")
    def job() -> None:
        return None

    job.delay()
    message = received(app, "slow")
    assert (message.priority, message.timelimit) == (3, (60, 50))
    assert message.content_type == "application/x-msgpack"
    with pytest.raises(ValidationError, match="soft_time_limit"):
        app.task(time_limit=5, soft_time_limit=10)(lambda: None)


# -- base= and class-based tasks ----------------------------------------------------------------


class Audited(Task[Any, Any]):
    """A base class: its attributes are defaults, and its __call__ wraps every run."""

    max_retries = 7
    queue = "audited"
    calls: list[tuple[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        Audited.calls.append(("before", self.request.id))
        result = super().__call__(*args, **kwargs)
        Audited.calls.append(("after", result))
        return result


def test_base_class_attributes_are_defaults_and_the_decorator_wins(app: App) -> None:
    @app.task(base=Audited)
    def one() -> int:
        return 1

    @app.task(base=Audited, max_retries=2, queue="other")
    def two() -> int:
        return 2

    assert isinstance(one, Audited)
    assert (one.max_retries, two.max_retries) == (7, 2)
    one.delay()
    assert received(app, "audited").task == one.name
    two.delay()
    assert received(app, "other").task == two.name


def test_a_custom_call_wraps_direct_calls_and_worker_runs(
    app: App, start_worker: StartWorker
) -> None:
    @app.task(base=Audited, bind=True, queue="celery")
    def whoami(self: Any, x: int) -> Any:
        return [x, self.request.id, self.request.called_directly]

    Audited.calls.clear()
    assert whoami(1) == [1, None, True]
    assert Audited.calls == [("before", None), ("after", [1, None, True])]
    Audited.calls.clear()
    start_worker(app)
    result = whoami.delay(2)
    assert result.get(timeout=10) == [2, result.id, False]
    assert Audited.calls == [("before", result.id), ("after", [2, result.id, False])]


def test_a_custom_call_that_calls_run_reaches_the_body(
    app: App, start_worker: StartWorker
) -> None:
    class Doubling(Task[Any, Any]):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return self.run(*args, **kwargs) * 2

    @app.task(base=Doubling, bind=True)
    def value(self: Any, x: int) -> int:
        assert self.request.id is not None
        return x

    start_worker(app)
    assert value.delay(4).get(timeout=10) == 8


def test_class_based_tasks_register_with_their_run(app: App, start_worker: StartWorker) -> None:
    class Multiply(Task[Any, Any]):
        name = "proj.multiply"

        def run(self, x: int, y: int) -> int:
            return x * y * self.factor

        factor = 10

    task = app.register_task(Multiply)
    assert app.tasks["proj.multiply"] is task
    assert task(2, 3) == 60
    start_worker(app)
    assert task.delay(1, 2).get(timeout=10) == 20


def test_a_base_with_handler_methods_is_accepted_now_that_the_worker_calls_them(
    app: App,
) -> None:
    """(Refused until the worker called them; tests/worker/test_tracer_celery.py drives
    them through a worker and the eager path.)"""

    class Hooked(Task[Any, Any]):
        def on_failure(self, *args: Any) -> None:
            return None

    task = app.task(base=Hooked)(lambda: None)
    assert task.custom_hooks == frozenset({"on_failure"})


def test_task_cls_is_every_tasks_base(make_app: MakeApp) -> None:
    app = make_app(task_cls=Audited)

    @app.task
    def plain() -> None:
        return None

    assert isinstance(plain, Audited)
    with pytest.raises(ValidationError, match="base"):
        app.task(base=dict)


# -- task_annotations --------------------------------------------------------------------------


def test_annotations_set_task_options_as_celery_applies_them(make_app: MakeApp) -> None:
    class Slow:
        def annotate(self, task: Task[Any, Any]) -> dict[str, Any] | None:
            return {"time_limit": 30} if task.name.endswith("slow") else None

    app = make_app(task_annotations=[
        {"proj.tasks.add": {"rate_limit": "10/s", "soft_time_limit": 5}},
        Slow(),
        {"*": {"max_retries": 9}},
    ])

    @app.task(name="proj.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="proj.tasks.slow")
    def slow() -> None:
        return None

    assert add.rate_limit is None  # annotations apply when the app is finalized
    app.finalize()
    assert (add.rate, add.soft_time_limit, add.max_retries) == (10.0, 5, 9)
    assert (slow.time_limit, slow.max_retries) == (30, 9)

    @app.task(name="proj.tasks.late")
    def late() -> None:
        return None

    assert late.max_retries == 9  # registered after finalize: annotated at once
    late.delay()
    assert received(app).timelimit == (None, None)
    add.delay(1, 2)
    assert received(app).timelimit == (None, 5)


def test_annotations_refuse_what_wiretask_cannot_honour(make_app: MakeApp) -> None:
    with pytest.raises(ImproperlyConfigured, match="acks_late"):
        make_app(task_annotations={"*": {"acks_late": False}})
    with pytest.raises(ImproperlyConfigured, match="'@on_failure' wraps a Task method"):
        make_app(task_annotations={"*": {"@on_failure": print}})
    with pytest.raises(ImproperlyConfigured, match="did you mean 'rate_limit'"):
        make_app(task_annotations={"proj.add": {"rate_limt": "1/s"}})
    with pytest.raises(ImproperlyConfigured, match="annotate"):
        make_app(task_annotations=[42])


def test_typing_and_strict_typing_decide_argument_checks(make_app: MakeApp) -> None:
    app = make_app()

    @app.task
    def checked(x: int) -> int:
        return x

    @app.task(typing=False, throws=(KeyError,))
    def unchecked(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="checked"):
        checked.delay(1, 2)
    unchecked.delay(1, 2)  # sent as is, as Celery does with typing=False
    assert received(app).args == (1, 2)
    assert unchecked.throws == (KeyError,)
    loose = make_app(strict_typing=False)

    @loose.task
    def anything(x: int) -> int:
        return x

    anything.delay(1, 2, 3)
    assert received(loose).args == (1, 2, 3)
