"""Exceptions in results: Celery's exception dict, both ways, and the safety rules."""

from __future__ import annotations

import builtins
import sys
import types
from collections.abc import Iterator
from typing import Any

import billiard.exceptions
import celery.exceptions
import pytest
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st

from wiretask import errors
from wiretask.protocol.exceptions import (
    exception_from_meta,
    exception_to_meta,
    expired_meta_result,
    is_exception_meta,
)


class Outer:
    class InnerError(Exception):
        pass


class NeedsTwo(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a, b)


@pytest.fixture(scope="module")
def celery_backend() -> Iterator[Any]:
    app = Celery("wt-exc", backend="cache+memory://", set_as_current=False)
    yield app.backend
    app.close()


def test_builtin_exception_dict_is_celerys(celery_backend: Any) -> None:
    exc = ValueError("bad 1", 2)
    meta = exception_to_meta(exc)
    assert meta == {"exc_type": "ValueError", "exc_message": ["bad 1", 2],
                    "exc_module": "builtins"}
    celery_meta = celery_backend.prepare_exception(exc)
    assert meta == {**celery_meta, "exc_message": list(celery_meta["exc_message"])}


def test_unserializable_args_become_reprs() -> None:
    marker = object()
    meta = exception_to_meta(ValueError("x", marker))
    assert meta["exc_message"] == ["x", repr(marker)]
    custom = exception_to_meta(ValueError(1, "a"), is_serializable=lambda v: isinstance(v, str))
    assert custom["exc_message"] == ["1", "a"]


def test_nested_classes_use_the_qualname() -> None:
    meta = exception_to_meta(Outer.InnerError("x"))
    assert meta["exc_type"] == "Outer.InnerError"
    assert meta["exc_module"] == __name__
    rebuilt = exception_from_meta(meta)
    assert type(rebuilt) is Outer.InnerError and rebuilt.args == ("x",)


def test_expired_meta_is_what_celery_writes() -> None:
    assert expired_meta_result() == {"exc_type": "TaskRevokedError", "exc_message": ["expired"],
                                     "exc_module": "celery.exceptions"}


@pytest.mark.parametrize(
    ("exc", "module", "name", "args"),
    [
        (errors.TaskRevokedError("expired"), "celery.exceptions", "TaskRevokedError",
         ["expired"]),
        (errors.TimeLimitExceeded(5.0), "billiard.exceptions", "TimeLimitExceeded", [5.0]),
        (errors.SoftTimeLimitExceeded(), "billiard.exceptions", "SoftTimeLimitExceeded", []),
        (errors.NotRegistered("tasks.nope"), "celery.exceptions", "NotRegistered",
         ["tasks.nope"]),
    ],
)
def test_wiretask_task_errors_travel_under_celerys_names(
    celery_backend: Any, exc: BaseException, module: str, name: str, args: list[Any]
) -> None:
    meta = exception_to_meta(exc)
    assert meta == {"exc_type": name, "exc_message": args, "exc_module": module}
    # Celery reads them as its own classes ...
    celery_exc = celery_backend.exception_to_python(meta)
    assert type(celery_exc).__name__ == name
    assert type(celery_exc).__module__ in {"celery.exceptions", "billiard.exceptions"}
    # ... and wiretask as its own, even though Celery is imported here.
    back = exception_from_meta(meta)
    assert type(back) is type(exc)
    assert str(back) == str(exc)


def test_celerys_own_dicts_map_to_wiretask_classes(celery_backend: Any) -> None:
    for exc, expected in [
        (celery.exceptions.TaskRevokedError("revoked"), errors.TaskRevokedError),
        (billiard.exceptions.TimeLimitExceeded(3.0), errors.TimeLimitExceeded),
        (billiard.exceptions.SoftTimeLimitExceeded(), errors.SoftTimeLimitExceeded),
        (celery.exceptions.NotRegistered("x.y"), errors.NotRegistered),
    ]:
        meta = celery_backend.prepare_exception(exc)
        back = exception_from_meta(meta)
        assert type(back) is expected
        assert back.args == tuple(meta["exc_message"]) or isinstance(back, errors.NotRegistered)
    assert exception_from_meta({"exc_type": "TimeLimitExceeded", "exc_message": [1],
                                "exc_module": "celery.exceptions"}).args == (1,)


def test_non_exception_names_are_refused() -> None:
    with pytest.raises(errors.DecodeError, match=r"os\.system is not an exception class"):
        exception_from_meta({"exc_type": "system", "exc_module": "os",
                             "exc_message": ["touch /tmp/pwned"]})
    with pytest.raises(errors.DecodeError):
        exception_from_meta({"exc_type": "path.join", "exc_module": "os", "exc_message": []})
    with pytest.raises(errors.DecodeError):
        exception_from_meta({"exc_type": "int", "exc_module": "builtins", "exc_message": []})


def test_modules_are_never_imported_from_wire_data() -> None:
    name = "wiretask_never_imported_module"
    assert name not in sys.modules
    exc = exception_from_meta({"exc_type": "Boom", "exc_module": name, "exc_message": ["x"]})
    assert name not in sys.modules
    assert type(exc).__name__ == "Boom" and type(exc).__module__ == name
    assert isinstance(exc, Exception) and exc.args == ("x",)
    # the synthesized class round-trips under the same names
    assert exception_to_meta(exc) == {"exc_type": "Boom", "exc_message": ["x"],
                                      "exc_module": name}


def test_module_getattr_hooks_never_run() -> None:
    calls: list[str] = []
    module = types.ModuleType("wiretask_lazy_module")

    def lazy(attr: str) -> type[Exception]:
        calls.append(attr)
        return ValueError

    module.__getattr__ = lazy  # type: ignore[method-assign]
    sys.modules[module.__name__] = module
    try:
        exc = exception_from_meta({"exc_type": "Lazy", "exc_module": module.__name__,
                                   "exc_message": []})
    finally:
        del sys.modules[module.__name__]
    assert calls == []
    assert type(exc).__name__ == "Lazy" and not isinstance(exc, ValueError)


def test_base_exceptions_that_would_end_the_caller_are_synthesized() -> None:
    for name in ["SystemExit", "KeyboardInterrupt", "GeneratorExit"]:
        exc = exception_from_meta({"exc_type": name, "exc_module": "builtins",
                                   "exc_message": [1]})
        assert type(exc).__name__ == name
        assert isinstance(exc, Exception)
        assert not isinstance(exc, getattr(builtins, name))


def test_constructor_that_refuses_the_args_falls_back_to_the_name() -> None:
    exc = exception_from_meta({"exc_type": "NeedsTwo", "exc_module": __name__,
                               "exc_message": ["only one"]})
    assert type(exc) is not NeedsTwo
    assert type(exc).__name__ == "NeedsTwo" and exc.args == ("only one",)
    good = exception_from_meta({"exc_type": "NeedsTwo", "exc_module": __name__,
                                "exc_message": [1, 2]})
    assert type(good) is NeedsTwo


def test_missing_module_and_scalar_message() -> None:
    exc = exception_from_meta({"exc_type": "Weird", "exc_message": "just text"})
    assert type(exc).__name__ == "Weird" and exc.args == ("just text",)
    assert exception_from_meta({"exc_type": "KeyError", "exc_module": "builtins"}).args == ("",)


@pytest.mark.parametrize(
    "meta",
    [None, [], "ValueError", {}, {"exc_type": 3}, {"exc_type": ""}, {"exc_type": "\x00"},
     {"exc_type": "a..b"}, {"exc_type": "1abc"}, {"exc_type": "X" * 300},
     {"exc_type": "ValueError", "exc_module": 7}],
)
def test_malformed_dicts_are_decode_errors(meta: Any) -> None:
    with pytest.raises(errors.DecodeError):
        exception_from_meta(meta)


def test_is_exception_meta() -> None:
    assert is_exception_meta({"exc_type": "X"})
    assert not is_exception_meta({"exc_type": None})
    assert not is_exception_meta("X")


_args = st.lists(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(),
              st.floats(allow_nan=False), st.lists(st.integers(), max_size=3)),
    max_size=4,
)


@given(_args, st.sampled_from([ValueError, KeyError, RuntimeError, Outer.InnerError,
                               errors.TaskRevokedError, errors.TimeLimitExceeded]))
def test_round_trip(args: list[Any], cls: type[Exception]) -> None:
    exc = cls(*args)
    back = exception_from_meta(exception_to_meta(exc))
    assert type(back) is cls
    assert back.args == tuple(args)


@given(st.text(min_size=1), st.text(), _args)
def test_arbitrary_names_never_crash_or_import(name: str, module: str, args: list[Any]) -> None:
    before = set(sys.modules)
    try:
        exc = exception_from_meta({"exc_type": name, "exc_module": module, "exc_message": args})
    except errors.DecodeError:
        return
    assert isinstance(exc, Exception)
    assert set(sys.modules) == before
