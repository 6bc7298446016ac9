"""Timing rules: countdown / eta / expires, naive-as-UTC, ISO parsing and formatting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from celery import Celery
from celery.utils.time import maybe_iso8601, maybe_make_aware
from hypothesis import given
from hypothesis import strategies as st

from wiretask.errors import MalformedMessage, ValidationError
from wiretask.protocol.timing import (
    format_iso,
    is_expired,
    parse_iso,
    resolve_eta,
    resolve_expires,
    to_aware,
)

NOW = datetime(2026, 11, 23, 19, 29, 2, 846359, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))
NEW_YORK_WINTER = timezone(timedelta(hours=-5))


class TestResolveEta:
    def test_countdown_adds_seconds_to_now(self) -> None:
        assert resolve_eta(now=NOW, countdown=10) == NOW + timedelta(seconds=10)
        assert resolve_eta(now=NOW, countdown=1.5) == NOW + timedelta(seconds=1.5)

    def test_countdown_keeps_the_offset_of_now(self) -> None:
        now = NOW.astimezone(IST)
        eta = resolve_eta(now=now, countdown=60)
        assert eta is not None
        assert eta.utcoffset() == timedelta(hours=5, minutes=30)
        assert format_iso(eta).endswith("+05:30")

    def test_zero_countdown_means_not_set(self) -> None:
        assert resolve_eta(now=NOW, countdown=0) is None
        assert resolve_eta(now=NOW, countdown=0.0) is None

    def test_zero_countdown_with_eta_is_not_a_conflict(self) -> None:
        eta = NOW + timedelta(hours=1)
        assert resolve_eta(now=NOW, countdown=0, eta=eta) == eta

    def test_negative_countdown_gives_a_past_eta(self) -> None:
        assert resolve_eta(now=NOW, countdown=-30) == NOW - timedelta(seconds=30)

    def test_countdown_and_eta_together_are_refused(self) -> None:
        with pytest.raises(ValidationError) as info:
            resolve_eta(now=NOW, countdown=5, eta=NOW)
        assert info.value.field == "countdown"
        assert "mutually exclusive" in info.value.problem

    @pytest.mark.parametrize("bad", ["10", True, float("nan"), float("inf"), [1]])
    def test_countdown_must_be_a_finite_number(self, bad: object) -> None:
        with pytest.raises(ValidationError) as info:
            resolve_eta(now=NOW, countdown=bad)  # type: ignore[arg-type]
        assert info.value.field == "countdown"

    def test_huge_countdown_is_a_validation_error(self) -> None:
        with pytest.raises(ValidationError) as info:
            resolve_eta(now=NOW, countdown=1e300)
        assert info.value.field == "countdown"

    def test_countdown_needs_an_aware_now(self) -> None:
        with pytest.raises(ValidationError) as info:
            resolve_eta(now=NOW.replace(tzinfo=None), countdown=1)
        assert info.value.field == "now"

    def test_nothing_set(self) -> None:
        assert resolve_eta(now=NOW) is None

    def test_naive_eta_is_utc(self) -> None:
        eta = resolve_eta(now=NOW, eta=datetime(2030, 1, 1, 12, 0))
        assert eta == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
        assert eta is not None and eta.tzinfo is UTC

    def test_aware_eta_keeps_its_offset(self) -> None:
        given_eta = datetime(2030, 1, 1, 7, 0, tzinfo=NEW_YORK_WINTER)
        eta = resolve_eta(now=NOW, eta=given_eta)
        assert eta is given_eta
        assert format_iso(given_eta) == "2030-01-01T07:00:00-05:00"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2030-01-01T12:00:00Z", datetime(2030, 1, 1, 12, tzinfo=UTC)),
            ("2030-01-01T12:00:00", datetime(2030, 1, 1, 12, tzinfo=UTC)),
            ("2030-01-01T17:30:00+05:30", datetime(2030, 1, 1, 12, tzinfo=UTC)),
            ("2026-11-23T19:29:02.846359+00:00", NOW),
        ],
    )
    def test_eta_strings_are_parsed(self, text: str, expected: datetime) -> None:
        assert resolve_eta(now=NOW, eta=text) == expected

    @pytest.mark.parametrize("text", ["garbage", "", "2030-13-01T00:00:00", "tomorrow"])
    def test_unparsable_eta_string_is_a_validation_error(self, text: str) -> None:
        with pytest.raises(ValidationError) as info:
            resolve_eta(now=NOW, eta=text)
        assert info.value.field == "eta"

    def test_eta_of_the_wrong_type(self) -> None:
        with pytest.raises(ValidationError) as info:
            resolve_eta(now=NOW, eta=1234567890)  # type: ignore[arg-type]
        assert info.value.field == "eta"

    def test_eta_before_1970_is_refused(self) -> None:
        with pytest.raises(ValidationError) as info:
            resolve_eta(now=NOW, eta="1969-12-31T23:59:59+00:00")
        assert info.value.field == "eta"
        with pytest.raises(ValidationError) as info:
            resolve_eta(now=NOW, countdown=-NOW.timestamp() - 1)
        assert info.value.field == "countdown"
        assert resolve_eta(now=NOW, eta="1970-01-01T00:00:00Z") is not None


class TestResolveExpires:
    def test_none(self) -> None:
        assert resolve_expires(now=NOW, expires=None) == (None, None)

    def test_seconds_set_the_header_and_the_ttl(self) -> None:
        assert resolve_expires(now=NOW, expires=60) == (NOW + timedelta(seconds=60), "60000")
        assert resolve_expires(now=NOW, expires=1.5) == (NOW + timedelta(seconds=1.5), "1500")

    def test_zero_and_negative_seconds_clamp_the_ttl(self) -> None:
        assert resolve_expires(now=NOW, expires=0) == (NOW, "0")
        assert resolve_expires(now=NOW, expires=-5) == (NOW - timedelta(seconds=5), "0")

    def test_timedelta_is_relative(self) -> None:
        assert resolve_expires(now=NOW, expires=timedelta(minutes=2)) == (
            NOW + timedelta(minutes=2),
            "120000",
        )

    def test_datetime_ttl_is_time_left(self) -> None:
        at = NOW + timedelta(seconds=90)
        assert resolve_expires(now=NOW, expires=at) == (at, "90000")

    def test_past_datetime_keeps_the_header_and_clamps_the_ttl(self) -> None:
        at = NOW - timedelta(hours=1)
        assert resolve_expires(now=NOW, expires=at) == (at, "0")

    def test_naive_datetime_is_utc(self) -> None:
        at, ttl = resolve_expires(now=NOW, expires=datetime(2026, 11, 23, 20, 29, 2, 846359))
        assert at == NOW + timedelta(hours=1)
        assert ttl == "3600000"

    def test_iso_string(self) -> None:
        at, ttl = resolve_expires(now=NOW, expires="2026-11-23T19:30:02.846359Z")
        assert at == NOW + timedelta(minutes=1)
        assert ttl == "60000"

    def test_bad_string(self) -> None:
        with pytest.raises(ValidationError) as info:
            resolve_expires(now=NOW, expires="soon")
        assert info.value.field == "expires"

    @pytest.mark.parametrize("bad", [True, [60], float("nan")])
    def test_bad_types(self, bad: object) -> None:
        with pytest.raises(ValidationError) as info:
            resolve_expires(now=NOW, expires=bad)  # type: ignore[arg-type]
        assert info.value.field == "expires"

    def test_needs_an_aware_now(self) -> None:
        with pytest.raises(ValidationError) as info:
            resolve_expires(now=NOW.replace(tzinfo=None), expires=10)
        assert info.value.field == "now"


class TestParseFormat:
    def test_parse_iso_send_side_raises_validation_error(self) -> None:
        with pytest.raises(ValidationError) as info:
            parse_iso("nope", field="eta")
        assert info.value.field == "eta"

    def test_parse_iso_decode_side_raises_malformed_message(self) -> None:
        with pytest.raises(MalformedMessage) as info:
            parse_iso("nope", field="headers.eta", decoding=True)
        assert info.value.field == "headers.eta"
        with pytest.raises(MalformedMessage):
            parse_iso(12, field="headers.eta", decoding=True)

    def test_format_iso_is_celerys_isoformat(self) -> None:
        assert format_iso(NOW) == "2026-11-23T19:29:02.846359+00:00"
        assert format_iso(datetime(2030, 1, 1)) == "2030-01-01T00:00:00+00:00"

    @given(st.datetimes(timezones=st.sampled_from([UTC, IST, NEW_YORK_WINTER]))
           | st.datetimes())
    def test_format_iso_equals_isoformat_with_an_offset(self, value: datetime) -> None:
        # The UTC fast path (orjson) must write exactly what isoformat() writes.
        assert format_iso(value) == to_aware(value).isoformat()

    def test_format_iso_keeps_offset_seconds(self) -> None:
        odd = timezone(timedelta(hours=5, minutes=30, seconds=7))
        value = datetime(2030, 1, 1, tzinfo=odd)
        assert format_iso(value) == "2030-01-01T00:00:00+05:30:07"

    def test_to_aware(self) -> None:
        naive = datetime(2030, 1, 1)
        assert to_aware(naive) == datetime(2030, 1, 1, tzinfo=UTC)
        assert to_aware(NOW) is NOW

    @given(
        st.datetimes(
            min_value=datetime(1970, 1, 2),
            max_value=datetime(9998, 12, 31),
            timezones=st.builds(
                timezone, st.timedeltas(min_value=-timedelta(hours=23, minutes=59),
                                        max_value=timedelta(hours=23, minutes=59))
                .map(lambda d: timedelta(minutes=d // timedelta(minutes=1)))
            ),
        )
    )
    def test_format_then_parse_keeps_instant_and_offset(self, value: datetime) -> None:
        back = parse_iso(format_iso(value), field="eta")
        assert back == value
        assert back.utcoffset() == value.utcoffset()


def test_is_expired_is_strict() -> None:
    assert not is_expired(None, now=NOW)
    assert not is_expired(NOW, now=NOW)
    assert is_expired(NOW, now=NOW + timedelta(microseconds=1))
    assert not is_expired(NOW + timedelta(seconds=1), now=NOW)


class TestAgainstCelery:
    """The same inputs through Celery 5.7's own code give the same wire values."""

    def test_countdown_and_numeric_expires_match_as_task_v2(self) -> None:
        app = Celery("timing", broker="memory://")
        msg = app.amqp.as_task_v2("tid", "t.add", (), {}, countdown=10, expires=60, now=NOW)
        eta = resolve_eta(now=NOW, countdown=10)
        expires, _ = resolve_expires(now=NOW, expires=60)
        assert eta is not None and expires is not None
        assert msg.headers["eta"] == format_iso(eta)
        assert msg.headers["expires"] == format_iso(expires)

    def test_naive_values_are_read_as_utc_by_celery(self) -> None:
        # What celery.worker.request.Request does with the eta header.
        text = "2030-01-01T12:00:00"
        celery_view = maybe_make_aware(maybe_iso8601(text))
        assert parse_iso(text, field="eta") == celery_view
