"""``wiretask._errormap``: the one error-mapping helper every driver's table goes through."""

from __future__ import annotations

import threading

import pytest

from wiretask._errormap import ErrorTable, Row, map_exceptions
from wiretask.errors import ConnectionLost, TransportError


class DriverError(Exception):
    pass


class DriverConnectionError(DriverError):
    pass


class DriverAuthError(DriverConnectionError):
    pass


TABLE = ErrorTable("Driver", (
    Row(DriverAuthError, TransportError, "a subclass meaning something else comes first"),
    Row(DriverConnectionError, ConnectionLost, "lost"),
    Row(DriverError, ConnectionLost, "only when it says so",
        when=lambda exc: "temporary" in str(exc)),
    Row(DriverError, TransportError, "the rest"),
))


@pytest.mark.parametrize(("exc", "error"), [
    (DriverAuthError("bad password"), TransportError),
    (DriverConnectionError("reset"), ConnectionLost),
    (DriverError("temporary trouble"), ConnectionLost),
    (DriverError("syntax"), TransportError),
])
def test_the_first_matching_row_wins(exc: Exception, error: type[TransportError]) -> None:
    with pytest.raises(TransportError) as info, \
            map_exceptions(TABLE, "publish", url="drv://host/0"):
        raise exc
    assert type(info.value) is error
    assert info.value.__cause__ is exc
    assert str(info.value) == f"Driver publish failed: {type(exc).__name__}: {exc} " \
                              "[drv://host/0]"
    assert info.value.url == "drv://host/0"


def test_the_secret_is_scrubbed_from_the_driver_text() -> None:
    with pytest.raises(TransportError) as info, \
            map_exceptions(TABLE, "connect", url="drv://:**@host", secret="hunter2"):
        raise DriverAuthError("user x with password hunter2 refused")
    assert "hunter2" not in str(info.value)
    assert "password ** refused" in str(info.value)


def test_exceptions_without_a_row_pass_untouched() -> None:
    boom = ValueError("a bug of ours")
    with pytest.raises(ValueError) as info, map_exceptions(TABLE, "publish", url=None):
        raise boom
    assert info.value is boom
    assert TABLE.row_for(boom) is None
    assert TABLE.translate(boom, "publish", url=None) is None
    with map_exceptions(TABLE, "publish", url=None):
        pass  # nothing raised, nothing done


def test_a_text_less_exception_is_named_by_its_class() -> None:
    error = TABLE.translate(DriverConnectionError(), "receive", url=None)
    assert str(error) == "Driver receive failed: DriverConnectionError"


def test_one_instance_serves_many_threads() -> None:
    boundary = map_exceptions(TABLE, "receive", url="drv://host")
    causes: dict[int, set[str]] = {}
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        mine = causes.setdefault(i, set())
        for _ in range(200):
            try:
                with boundary:
                    raise DriverConnectionError(f"thread {i}")
            except ConnectionLost as exc:
                mine.add(str(exc.__cause__))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert causes == {i: {f"thread {i}"} for i in range(8)}


def test_on_error_sees_each_translated_driver_exception_first() -> None:
    seen: list[BaseException] = []
    boundary = map_exceptions(TABLE, "publish", url=None, on_error=seen.append)
    lost = DriverConnectionError("reset")
    with pytest.raises(ConnectionLost) as info, boundary:
        raise lost
    assert seen == [lost] and info.value.__cause__ is lost
    with pytest.raises(ValueError), boundary:
        raise ValueError("a bug of ours")  # not translated: not the driver's to clean up
    with boundary:
        pass
    assert seen == [lost]
