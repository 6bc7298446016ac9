"""Task states, precedence, transitions and the meta dict (Celery's values and shape)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import celery.states as cs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiretask.errors import TaskRevokedError, ValidationError
from wiretask.protocol import states

BUILTIN = ["PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "REVOKED", "REJECTED",
           "RETRY", "IGNORED"]


def test_state_values_and_sets_are_celerys() -> None:
    for name in BUILTIN:
        assert getattr(states, name) == getattr(cs, name) == name
    assert states.READY_STATES == cs.READY_STATES
    assert states.UNREADY_STATES == cs.UNREADY_STATES
    assert states.EXCEPTION_STATES == cs.EXCEPTION_STATES
    assert states.PROPAGATE_STATES == cs.PROPAGATE_STATES
    assert states.ALL_STATES == cs.ALL_STATES
    assert list(states.PRECEDENCE) == cs.PRECEDENCE


@given(st.sampled_from([*BUILTIN, "PROGRESS", "custom", ""]))
def test_precedence_matches_celery(state: str) -> None:
    assert states.precedence(state) == cs.precedence(state)


def test_custom_states_rank_between_failure_and_revoked() -> None:
    p = states.precedence
    assert p("SUCCESS") < p("FAILURE") < p("PROGRESS") < p("REVOKED") < p("STARTED")
    assert p("PROGRESS") == p("ANYTHING")


def test_ready_states_are_final_and_everything_else_is_open() -> None:
    for ready in states.READY_STATES:
        assert states.FOLLOWERS[ready] == frozenset()
        for new in [*BUILTIN, "PROGRESS"]:
            assert not states.may_follow(ready, new)
    for unready in [*states.UNREADY_STATES, "IGNORED", "PROGRESS"]:
        for new in [*BUILTIN, "PROGRESS"]:
            assert states.may_follow(unready, new)
    for new in [*BUILTIN, "PROGRESS"]:
        assert states.may_follow(None, new)
    # A retried task runs again under the same id.
    assert states.may_follow(states.RETRY, states.STARTED)
    assert states.may_follow(states.RETRY, states.SUCCESS)
    assert states.is_ready(states.REVOKED) and not states.is_ready("PROGRESS")


def test_make_meta_has_celerys_keys_in_celerys_order() -> None:
    done = datetime(2026, 11, 23, 19, 30, 30, 595171, tzinfo=UTC)
    meta = states.make_meta("id-1", states.SUCCESS, 42, date_done=done)
    assert list(meta) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert meta == {"status": "SUCCESS", "result": 42, "traceback": None, "children": [],
                    "date_done": "2026-11-23T19:30:30.595171+00:00", "task_id": "id-1"}


def test_make_meta_optional_keys_sit_before_task_id() -> None:
    meta = states.make_meta("t", "PROGRESS", {"current": 1}, group_id="g", parent_id="p",
                            extra={"name": "tasks.add", "retries": 0})
    assert list(meta) == ["status", "result", "traceback", "children", "date_done",
                          "group_id", "parent_id", "name", "retries", "task_id"]
    assert "group_id" not in states.make_meta("t", "STARTED", None, group_id=None)


def test_date_done_only_for_ready_states_with_offset() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert states.make_meta("t", "STARTED", None, date_done=now)["date_done"] is None
    assert states.make_meta("t", "FAILURE", None, date_done=now)["date_done"] == (
        "2026-01-02T03:04:05+05:30"
    )
    naive = datetime(2026, 1, 2, 3, 4, 5)  # naive means UTC
    assert states.make_meta("t", "SUCCESS", 1, date_done=naive)["date_done"] == (
        "2026-01-02T03:04:05+00:00"
    )
    assert states.make_meta("t", "SUCCESS", 1, date_done="x")["date_done"] == "x"


def test_exception_results_are_converted_for_exception_states_only() -> None:
    meta = states.make_meta("t", states.REVOKED, TaskRevokedError("expired"))
    assert meta["result"] == {"exc_type": "TaskRevokedError", "exc_message": ["expired"],
                              "exc_module": "celery.exceptions"}
    exc = ValueError("x")
    assert states.make_meta("t", "PROGRESS", exc)["result"] is exc


@pytest.mark.parametrize(
    ("task_id", "status", "extra"),
    [("", "SUCCESS", None), (None, "SUCCESS", None), ("t", "", None), ("t", 3, None),
     ("t", "SUCCESS", {"status": "x"}), ("t", "SUCCESS", {"task_id": "x"})],
)
def test_make_meta_refuses_bad_values(task_id: object, status: object, extra: object) -> None:
    with pytest.raises(ValidationError):
        states.make_meta(task_id, status, None, extra=extra)  # type: ignore[arg-type]
