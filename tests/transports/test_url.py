"""transport_from_url and mask_url."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import pytest

from wiretask.errors import ImproperlyConfigured
from wiretask.transports.memory import MemoryTransport
from wiretask.transports.sqlite import SQLiteTransport
from wiretask.transports.url import mask_url, registered_schemes, transport_from_url

from .conftest import Site


def test_memory_urls() -> None:
    default = transport_from_url("memory://")
    assert isinstance(default, MemoryTransport)
    assert default.name == "default"
    named = transport_from_url("memory://tests")
    assert isinstance(named, MemoryTransport)
    assert named.name == "tests"


def test_sqlite_url_with_options(tmp_path: Path) -> None:
    transport = transport_from_url(f"sqlite:///{tmp_path}/b.db", visibility_timeout=7)
    assert isinstance(transport, SQLiteTransport)
    assert transport.path == f"{tmp_path}/b.db"
    assert transport.capabilities.visibility_timeout == 7
    assert not (tmp_path / "b.db").exists()  # construction does no I/O


def test_scheme_is_case_insensitive(tmp_path: Path) -> None:
    assert isinstance(transport_from_url("MEMORY://x"), MemoryTransport)


def test_redis_urls_dispatch_lazily_to_the_redis_transport() -> None:
    pytest.importorskip("redis")
    from wiretask.transports.redis import RedisTransport  # noqa: PLC0415

    for url in ("redis://:secret@127.0.0.1:1/0", "rediss://127.0.0.1:1/0"):
        transport = transport_from_url(url)
        assert isinstance(transport, RedisTransport)
        assert "secret" not in transport.url


@pytest.mark.parametrize(
    "url", ["kafka://guest@localhost//", "sqs://", "celery", "localhost:6379", ""]
)
def test_unknown_schemes_name_the_supported_ones(url: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        transport_from_url(url)
    assert info.value.setting == "broker_url"
    if url:
        for scheme in ("memory://", "sqlite://", "redis://", "rediss://", "amqp://",
                       "pyamqp://", "amqps://"):
            assert scheme in str(info.value)


def test_unknown_scheme_error_does_not_leak_the_password() -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        transport_from_url("kafka://user:hunter2@host//")
    assert "hunter2" not in str(info.value)


def test_not_a_string() -> None:
    with pytest.raises(ImproperlyConfigured):
        transport_from_url(None)  # type: ignore[arg-type]


def test_unknown_options_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="colour"):
        transport_from_url("sqlite:///x.db", colour="blue")


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_redis(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "redis" or name.startswith("redis."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    for module in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, module)
    # The package and its modules (each would find redis-py cached otherwise).
    for module in [m for m in sys.modules if m.startswith("wiretask.transports.redis")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", no_redis)
    with pytest.raises(ImproperlyConfigured, match=r"wiretask\[redis\]"):
        transport_from_url("redis://localhost")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:**@host:6379/0"),
        ("redis://user:s3cret@host/1", "redis://user:**@host/1"),
        ("amqp://guest:guest@localhost:5672//", "amqp://guest:**@localhost:5672//"),
        ("redis://user:p@ss@host", "redis://user:**@host"),
        ("redis://user@host", "redis://user@host"),
        ("redis://[::1]:6379", "redis://[::1]:6379"),
        ("redis://:pw@[::1]:6379/0", "redis://:**@[::1]:6379/0"),
        ("redis://host/0?password=s3cret&db=1", "redis://host/0?password=**&db=1"),
        ("sqlite:////tmp/b.db", "sqlite:////tmp/b.db"),
        ("memory://", "memory://"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_of_garbage_hides_it() -> None:
    assert mask_url("redis://[::1") == "<unparsable URL>"


# -- third-party schemes through the wiretask.transports entry-point group ------------------

PLUGIN = '''
from wiretask.transports.memory import MemoryTransport


class PluginTransport(MemoryTransport):
    """memory's broker under another scheme."""

    @classmethod
    def from_url(cls, url, **options):
        return cls(url.split("://", 1)[1] or "default")


class OtherTransport(PluginTransport):
    """Another class for the same scheme."""


NOT_A_TRANSPORT = object()
'''


def test_an_entry_point_adds_a_scheme(site: Site) -> None:
    site.module("wt_plugin", PLUGIN)
    site.distribution("wt-plugin", {"plug": "wt_plugin:PluginTransport"})
    assert "plug" in registered_schemes()
    transport = transport_from_url("plug://shared")
    assert type(transport).__name__ == "PluginTransport"
    assert isinstance(transport, MemoryTransport) and transport.name == "shared"
    # Built-in schemes are still found first, without the entry points.
    assert isinstance(transport_from_url("memory://x"), MemoryTransport)


def test_unknown_schemes_list_the_entry_points_too(site: Site) -> None:
    site.module("wt_plugin", PLUGIN)
    site.distribution("wt-plugin", {"plug": "wt_plugin:PluginTransport"})
    with pytest.raises(ImproperlyConfigured) as info:
        transport_from_url("nope://x")
    message = str(info.value)
    assert "memory://" in message and "redis://" in message
    assert "plug:// (plug = wt_plugin:PluginTransport from wt-plugin)" in message


def test_a_scheme_registered_twice_is_refused(site: Site) -> None:
    site.module("wt_plugin", PLUGIN)
    site.distribution("wt-plugin-a", {"plug": "wt_plugin:PluginTransport"})
    site.distribution("wt-plugin-b", {"plug": "wt_plugin:OtherTransport"})
    with pytest.raises(ImproperlyConfigured, match=r"plug:// is registered twice") as info:
        transport_from_url("plug://x")
    message = str(info.value)
    assert "wt_plugin:PluginTransport from wt-plugin-a" in message
    assert "wt_plugin:OtherTransport from wt-plugin-b" in message


def test_an_entry_point_claiming_a_built_in_scheme_is_refused(site: Site) -> None:
    site.module("wt_plugin", PLUGIN)
    site.distribution("wt-plugin", {"redis": "wt_plugin:PluginTransport"})
    with pytest.raises(ImproperlyConfigured, match=r"claims the built-in scheme redis://"):
        registered_schemes()
    with pytest.raises(ImproperlyConfigured, match=r"wt-plugin"):
        transport_from_url("plug://x")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("wt_plugin:NOT_A_TRANSPORT", "is not a Transport subclass"),
        ("wt_plugin:MemoryTransport.from_url", "is not a Transport subclass"),
        ("wt_plugin:Missing", "cannot be loaded"),
        ("wt_no_such_module:Thing", "cannot be loaded"),
    ],
)
def test_a_bad_entry_point_value_is_refused(site: Site, value: str, problem: str) -> None:
    site.module("wt_plugin", PLUGIN)
    site.distribution("wt-plugin", {"plug": value})
    with pytest.raises(ImproperlyConfigured, match=problem) as info:
        transport_from_url("plug://x")
    assert info.value.setting == "broker_url"
    assert value in str(info.value)
