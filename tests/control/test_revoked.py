"""The revoked-id store: Celery's bounds (50,000 ids, 3 hours) and the state file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wiretask.control.revoked import REVOKE_EXPIRES, REVOKES_MAX, RevokedStore
from wiretask.errors import ImproperlyConfigured


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_celerys_bounds_by_default() -> None:
    store = RevokedStore()
    assert (store.maxlen, store.expires) == (REVOKES_MAX, REVOKE_EXPIRES) == (50_000, 10_800)


def test_ids_are_kept_oldest_first_and_a_second_revoke_renews_one() -> None:
    clock = Clock()
    store = RevokedStore(clock=clock)
    store.add(["a", "b"])
    clock.now += 1
    store.add(["c", "a"])

    assert store.ids() == ["b", "c", "a"]
    assert "a" in store and "b" in store and "x" not in store
    assert len(store) == 3


def test_at_most_maxlen_ids_the_oldest_go_first() -> None:
    store = RevokedStore(maxlen=3)
    store.add(["1", "2", "3", "4"])
    store.add(["5"])

    assert store.ids() == ["3", "4", "5"]
    assert "1" not in store


def test_an_id_expires_after_expires_seconds() -> None:
    clock = Clock()
    store = RevokedStore(expires=100, clock=clock)
    store.add(["old"])
    clock.now += 60
    store.add(["new"])
    clock.now += 41

    assert "old" not in store  # asked after its expiry, even before a purge
    assert "new" in store
    assert store.ids() == ["new"]


def test_stamps_match_any_revoked_value() -> None:
    store = RevokedStore()
    store.add_stamps({"mystamp": ["a", "b"], "other": "x"})
    store.add_stamps({"mystamp": "c"})

    assert store.stamps() == {"mystamp": ["a", "b", "c"], "other": ["x"]}
    assert store.stamp_revoked({"mystamp": "c"}) == ("mystamp", "c")
    assert store.stamp_revoked({"mystamp": ["z", "b"]}) == ("mystamp", "b")
    assert store.stamp_revoked({"mystamp": "z", "unrelated": "a"}) is None
    assert store.stamp_revoked(None) is None


def test_the_state_file_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "worker.state"
    clock = Clock()
    first = RevokedStore(path=path, clock=clock)
    first.add(["a", "b"])
    first.add_stamps({"s": ["v"]})
    first.save(clock=42)

    again = RevokedStore(path=path, clock=clock)

    assert again.ids() == ["a", "b"]
    assert again.stamps() == {"s": ["v"]}
    assert again.saved_clock == 42
    state = json.loads(path.read_text())
    assert state["format"] == "wiretask-statedb" and state["version"] == 1
    assert state["revoked"] == [["a", clock.now], ["b", clock.now]]


def test_every_revoke_is_on_disk_at_once(tmp_path: Path) -> None:
    path = tmp_path / "worker.state"
    RevokedStore(path=path).add(["a"])  # no save() or close: a kill -9 right after
    assert RevokedStore(path=path).ids() == ["a"]


def test_ids_expired_while_the_worker_was_down_are_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "worker.state"
    clock = Clock()
    RevokedStore(path=path, expires=100, clock=clock).add(["gone"])
    clock.now += 50
    RevokedStore(path=path, expires=100, clock=clock).add(["kept"])
    clock.now += 60

    assert RevokedStore(path=path, expires=100, clock=clock).ids() == ["kept"]


def test_a_missing_file_is_an_empty_store(tmp_path: Path) -> None:
    assert RevokedStore(path=tmp_path / "none.state").ids() == []


@pytest.mark.parametrize("content", [
    b"\x00\x06\x15a\x00\x00\x00\x02\x00\x00\x04\xd2",  # what a dbm/shelve file starts like
    b"not json",
])
def test_a_file_that_is_not_ours_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "celery.state"
    path.write_bytes(content)
    with pytest.raises(ImproperlyConfigured, match="not a wiretask state file") as info:
        RevokedStore(path=path)
    assert info.value.setting == "worker_state_db"


def test_another_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.state"
    path.write_text(json.dumps({"format": "wiretask-statedb", "version": 9, "revoked": []}))
    with pytest.raises(ImproperlyConfigured, match="version 9"):
        RevokedStore(path=path)
