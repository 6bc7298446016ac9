"""AMQP URLs and transport options: Kombu's URL rules, every option checked by name,
passwords never shown; and the error table, row by row (``wiretask._amqp.errors``)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from amqp import exceptions as amqp_errors

from wiretask._amqp.errors import AMQP_ERRORS, connection_is_gone, translate
from wiretask._amqp.options import parse
from wiretask.errors import ConnectionLost, ImproperlyConfigured, TransportError
from wiretask.transports.amqp import AMQPTransport
from wiretask.transports.url import transport_from_url


@pytest.mark.parametrize(
    ("url", "host", "port", "user", "password", "vhost"),
    [
        ("amqp://", "127.0.0.1", 5672, "guest", "guest", "/"),
        ("amqp://localhost//", "127.0.0.1", 5672, "guest", "guest", "/"),
        ("amqp://u:p@broker:5673/", "broker", 5673, "u", "p", "/"),
        ("pyamqp://u:p@broker/app", "broker", 5672, "u", "p", "app"),
        ("amqp://u:p%40ss@broker/%2F", "broker", 5672, "u", "p@ss", "/"),
        ("amqp://broker/a%2Fb", "broker", 5672, "guest", "guest", "a/b"),
        ("amqps://u:p@broker//", "broker", 5671, "u", "p", "/"),
        ("amqp://[::1]:5999//", "::1", 5999, "guest", "guest", "/"),
    ],
)
def test_urls_follow_kombus_rules(
    url: str, host: str, port: int, user: str, password: str, vhost: str
) -> None:
    options = parse(url, {})
    assert (options.host, options.port, options.userid, options.password,
            options.virtual_host) == (host, port, user, password, vhost)


def test_amqps_means_tls_and_the_query_holds_its_options() -> None:
    options = parse("amqps://h//?ssl_ca_certs=/ca.pem&ssl_cert_reqs=CERT_REQUIRED"
                    "&ssl_server_hostname=rabbit", {})
    assert options.ssl == {"ca_certs": "/ca.pem", "cert_reqs": ssl.CERT_REQUIRED,
                           "server_hostname": "rabbit"}
    assert parse("amqps://h//", {}).ssl is True
    assert parse("amqp://h//", {}).ssl is False
    assert parse("amqp://h//", {"ssl": {"certfile": "c.pem"}}).ssl == {"certfile": "c.pem"}


def test_the_query_wins_over_keyword_options() -> None:
    options = parse("amqp://h//?heartbeat=10&delay_mode=ladder&max_priority=5",
                    {"heartbeat": 30, "delay_mode": "celery"})
    assert (options.heartbeat, options.delay_mode, options.max_priority) == (10.0, "ladder", 5)
    kwargs = options.connection_kwargs()
    assert kwargs["heartbeat"] == 10.0
    assert kwargs["host"] == "h:5672"


@pytest.mark.parametrize(
    ("url", "options", "setting", "message"),
    [
        ("amqp://h//?colour=blue", {}, "colour", "unknown option; known:"),
        ("amqp://h//", {"visibility_timeout": 10}, "visibility_timeout", "no visibility"),
        ("amqp://h//", {"max_retries": 3}, "max_retries", "task_publish_retry_policy"),
        ("amqp://h//?heartbeat=soon", {}, "heartbeat", "bad value 'soon'"),
        ("amqp://h//", {"heartbeat": -1}, "heartbeat", "must be >= 0"),
        ("amqp://h//", {"connect_timeout": 0}, "connect_timeout", "must be > 0"),
        ("amqp://h//", {"queue_type": "stream"}, "queue_type", "'classic', 'quorum'"),
        ("amqp://h//", {"delay_mode": "native"}, "delay_mode", "'auto', 'ladder', 'celery'"),
        ("amqp://h//", {"max_priority": 256}, "max_priority", "1..255"),
        ("amqp://h//", {"ssl": {"cafile": "x"}}, "ssl", r"unknown TLS option\(s\) cafile"),
        ("amqp://h//?ssl_cert_reqs=maybe", {}, "ssl_cert_reqs", "CERT_REQUIRED"),
        ("amqp://h//", {"queue_arguments": {"q": {"x-queue-type": "stream"}}},
         "queue_arguments", "x-queue-type of 'q'"),
        ("amqp://h//", {"login_method": "MAGIC"}, "login_method", "'AMQPLAIN'"),
        ("amqp://h//", {"confirm_publish": "yes"}, "confirm_publish", "True or False"),
    ],
)
def test_bad_and_unknown_options_are_refused_by_name(
    url: str, options: dict[str, Any], setting: str, message: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        AMQPTransport(url, **options)
    assert raised.value.setting == setting


def test_bad_urls_are_refused_without_showing_the_password() -> None:
    for url in ("amqp://u:s3cret@a;amqp://u:s3cret@b//", "redis://u:s3cret@h/0",
                "amqp://u:s3cret@h:99999//"):
        with pytest.raises(ImproperlyConfigured) as raised:
            AMQPTransport(url)
        assert "s3cret" not in str(raised.value)
        assert raised.value.setting == "broker_url"


def test_every_scheme_builds_the_transport_with_a_masked_url() -> None:
    for scheme in ("amqp", "pyamqp", "amqps"):
        transport = transport_from_url(f"{scheme}://user:s3cret@h//", heartbeat=0)
        assert isinstance(transport, AMQPTransport)
        assert transport.url == f"{scheme}://user:**@h//"
        assert "s3cret" not in repr(transport)


def test_capabilities_follow_the_delay_mode_and_queue_types() -> None:
    def caps(**options: Any) -> tuple[bool, bool]:
        c = AMQPTransport("amqp://h//", **options).capabilities
        return c.native_delay, c.native_delay_on_send

    assert caps() == (True, False)  # classic: Celery's form on send, the worker hands back
    assert caps(queue_type="quorum") == (True, True)
    assert caps(queue_type="quorum", queue_arguments={"q": {}}) == (True, False)  # mixed
    assert caps(delay_mode="ladder") == (True, True)
    assert caps(delay_mode="celery", queue_type="quorum") == (False, False)
    priorities = AMQPTransport("amqp://h//", max_priority=10).capabilities
    assert (priorities.priorities, priorities.max_priority) == (True, 10)
    assert AMQPTransport("amqp://h//").capabilities.priorities is False


# -- the error table ------------------------------------------------------------------

ROWS = [
    (ssl.SSLCertVerificationError("certificate verify failed"), TransportError),
    (amqp_errors.AccessRefused("ACCESS_REFUSED - Login was refused"), TransportError),
    (amqp_errors.NotAllowed("NOT_ALLOWED - vhost nope not found"), TransportError),
    (amqp_errors.InvalidPath("bad path"), TransportError),
    (amqp_errors.PreconditionFailed("PRECONDITION_FAILED - inequivalent arg"), TransportError),
    (amqp_errors.NotFound("NOT_FOUND - no queue 'q'"), TransportError),
    (amqp_errors.ResourceLocked("RESOURCE_LOCKED"), TransportError),
    (amqp_errors.ContentTooLarge("too large"), TransportError),
    (amqp_errors.AMQPNotImplementedError("global qos"), TransportError),
    (amqp_errors.FrameError("frame"), TransportError),
    (amqp_errors.FrameSyntaxError("syntax"), TransportError),
    (amqp_errors.UnexpectedFrame("unexpected"), TransportError),
    (amqp_errors.InvalidCommand("command"), TransportError),
    (amqp_errors.ChannelNotOpen("closed"), TransportError),
    (amqp_errors.ConnectionForced("CONNECTION_FORCED - broker shutdown"), ConnectionLost),
    (amqp_errors.InternalError("internal"), ConnectionLost),
    (amqp_errors.RecoverableConnectionError("connection already closed"), ConnectionLost),
    (amqp_errors.NoConsumers("no consumers"), ConnectionLost),
    (TimeoutError("timed out"), ConnectionLost),
    (ConnectionRefusedError(111, "Connection refused"), ConnectionLost),
    (ConnectionResetError(104, "reset"), ConnectionLost),
    (ssl.SSLError("wrong version number"), ConnectionLost),
    (amqp_errors.AMQPError("other"), TransportError),
]


@pytest.mark.parametrize(("exc", "expected"), ROWS, ids=lambda v: type(v).__name__)
def test_each_row_of_the_error_table(exc: BaseException, expected: type[TransportError]) -> None:
    error = AMQP_ERRORS.translate(exc, "publish", url="amqp://u:**@h//", secret="s3cret")
    assert type(error) is expected
    assert str(error).startswith(f"RabbitMQ publish failed: {type(exc).__name__}")
    assert error.url == "amqp://u:**@h//"
    assert error.recoverable is (expected is ConnectionLost)


def test_every_row_is_exercised() -> None:
    rows = {row.driver for row in AMQP_ERRORS.rows}
    covered = {row.driver for exc, _ in ROWS if (row := AMQP_ERRORS.row_for(exc)) is not None}
    assert covered == rows


def test_translate_scrubs_the_password_and_chains() -> None:
    with pytest.raises(ConnectionLost) as raised, translate("connect", url="amqp://u:**@h//",
                                                            secret="s3cret"):
        raise OSError("cannot reach u:s3cret@h")
    assert "s3cret" not in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)


def test_non_driver_errors_pass_through() -> None:
    with pytest.raises(KeyError), translate("publish", url="amqp://h//"):
        raise KeyError("a bug, not the broker")
    assert AMQP_ERRORS.translate(ValueError("no"), "x", url="u") is None


def test_which_errors_end_the_connection() -> None:
    assert connection_is_gone(OSError("reset"))
    assert connection_is_gone(amqp_errors.ConnectionForced("shutdown"))
    assert not connection_is_gone(amqp_errors.NotFound("no queue"))
    assert not connection_is_gone(amqp_errors.PreconditionFailed("inequivalent"))
