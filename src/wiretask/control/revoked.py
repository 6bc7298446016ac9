"""The revoked-id store of a worker: Celery's bounded ``LimitedSet``, optionally on disk.

A worker remembers the task ids it was told to revoke (``revoke`` from either side), so
that a revoked message that arrives later, waits for its eta or sits in the pool's queue
is not run. Like Celery's worker (``celery.worker.state.revoked``) the set is bounded:
at most ``maxlen`` ids (50,000; the oldest go first) for at most ``expires`` seconds
each (10,800 s = 3 h), and it keeps the stamped headers of
``revoke_by_stamped_headers`` beside it.

**Persistence** (``worker_state_db`` / ``--statedb``, Celery's names): with a path, the
set is loaded when the worker starts and written back after every change (Celery writes
its shelve only at shutdown, so a crashed worker forgets; here a revoke survives a
``kill -9`` too). The file is wiretask's own, JSON, replaced atomically (written to a
temporary file in the same directory, flushed, ``os.replace``d)::

    {"format": "wiretask-statedb", "version": 1,
     "revoked": [["<task id>", <unix time revoked>], ...],   (oldest first)
     "revoked_stamps": {"<header>": ["<value>", ...]},
     "clock": <the worker's Lamport clock>}

Times in the file are wall-clock (comparable across reboots, unlike the monotonic stamps
Celery pickles and then has to drop); an id revoked longer than ``expires`` ago is not
loaded. A Celery ``--statedb`` file (a ``shelve`` of pickles) is not read: pickle is never
loaded from disk by wiretask; pointing ``worker_state_db`` at one is refused with the
reason.

Threading: one lock guards the set; the mailbox thread adds, the routing step and the
pools' threads read.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from wiretask.errors import ImproperlyConfigured

__all__ = ["REVOKES_MAX", "REVOKE_EXPIRES", "STATEDB_FORMAT", "RevokedStore"]

logger = logging.getLogger("wiretask.worker")

#: Celery's ``REVOKES_MAX`` (``CELERY_WORKER_REVOKES_MAX``): most ids kept.
REVOKES_MAX: Final = 50_000
#: Celery's ``REVOKE_EXPIRES`` (``CELERY_WORKER_REVOKE_EXPIRES``): seconds an id is kept.
REVOKE_EXPIRES: Final = 10_800.0
#: The ``format`` field of a state file, and its version.
STATEDB_FORMAT: Final = "wiretask-statedb"
STATEDB_VERSION: Final = 1


class RevokedStore:
    """Revoked task ids (bounded, expiring) and revoked stamped headers.

    Args:
        maxlen: most ids kept; adding one more drops the oldest.
        expires: seconds an id is kept after it was (last) revoked.
        path: the state file (``worker_state_db``), or None to keep nothing on disk.
        clock: the wall clock (tests pass a fake one).

    Raises:
        ImproperlyConfigured: a state file that is not wiretask's (a Celery shelve, or
            not JSON), or one that cannot be read.
    """

    def __init__(
        self,
        *,
        maxlen: int = REVOKES_MAX,
        expires: float = REVOKE_EXPIRES,
        path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.maxlen = maxlen
        self.expires = expires
        self.path = Path(path) if path is not None else None
        self._clock = clock
        self._lock = threading.Lock()
        #: id -> wall time revoked; insertion order is revocation order (oldest first).
        self._ids: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: Celery's ``revoked_stamps``: header -> the values revoked.
        self._stamps: dict[str, list[Any]] = {}
        #: The worker's Lamport clock as last saved (the mailbox adjusts to it).
        self.saved_clock = 0
        if self.path is not None:
            self._load(self.path)

    # -- reading ----------------------------------------------------------------------

    def __contains__(self, task_id: object) -> bool:
        if not self._ids:  # every received message asks: the common answer, lock-free
            return False
        with self._lock:
            at = self._ids.get(task_id) if isinstance(task_id, str) else None
            return at is not None and self._clock() - at <= self.expires

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._ids)

    def ids(self) -> list[str]:
        """The revoked ids, oldest first (what ``inspect revoked`` lists)."""
        with self._lock:
            self._purge()
            return list(self._ids)

    def stamps(self) -> dict[str, list[Any]]:
        with self._lock:
            return {header: list(values) for header, values in self._stamps.items()}

    def stamp_revoked(self, stamps: Mapping[str, Any] | None) -> tuple[str, Any] | None:
        """The ``(header, value)`` of ``stamps`` (a message's ``stamps`` header) that a
        ``revoke_by_stamped_headers`` revoked, or None (Celery's ``Request.revoked``)."""
        if not stamps or not self._stamps:
            return None
        with self._lock:
            if not self._stamps:
                return None
            for header, revoked in self._stamps.items():
                value = stamps.get(header)
                if value is None:
                    continue
                for one in value if isinstance(value, list | tuple) else [value]:
                    if one in revoked:
                        return header, one
        return None

    # -- changing ---------------------------------------------------------------------

    def add(self, task_ids: Iterable[str]) -> list[str]:
        """Revoke ``task_ids`` (again: an id revoked before restarts its expiry); the
        state file is rewritten. Returns the ids, in the order added."""
        added = list(dict.fromkeys(task_ids))
        now = self._clock()
        with self._lock:
            for task_id in added:
                self._ids.pop(task_id, None)
                self._ids[task_id] = now
            self._purge()
        self.save()
        return added

    def add_stamps(self, headers: Mapping[str, Any]) -> None:
        """Revoke every message whose ``stamps`` carry one of these header values
        (Celery's ``revoke_by_stamped_headers``: the values add to earlier ones)."""
        with self._lock:
            for header, values in headers.items():
                listed = list(values) if isinstance(values, list | tuple | set) else [values]
                known = self._stamps.setdefault(str(header), [])
                known.extend(v for v in listed if v not in known)
        self.save()

    def _purge(self) -> None:  # under the lock
        while len(self._ids) > self.maxlen:
            self._ids.popitem(last=False)
        cutoff = self._clock() - self.expires
        while self._ids:
            oldest = next(iter(self._ids.values()))
            if oldest >= cutoff:
                break
            self._ids.popitem(last=False)

    # -- the state file ---------------------------------------------------------------

    def save(self, clock: int | None = None) -> None:
        """Write the state file (nothing without a path). A failure is logged: the ids
        stay revoked in memory."""
        if self.path is None:
            return
        if clock is not None:
            self.saved_clock = clock
        with self._lock:
            self._purge()
            state = {
                "format": STATEDB_FORMAT,
                "version": STATEDB_VERSION,
                "revoked": [[task_id, at] for task_id, at in self._ids.items()],
                "revoked_stamps": {h: list(v) for h, v in self._stamps.items()},
                "clock": self.saved_clock,
            }
        try:
            _write_atomically(self.path, json.dumps(state, default=repr))
        except OSError:
            logger.exception("could not write the worker state file %s", self.path)

    def _load(self, path: Path) -> None:
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ImproperlyConfigured(
                f"worker_state_db: cannot read {path}: {exc}", setting="worker_state_db"
            ) from exc
        try:
            state = json.loads(text)
        except ValueError:
            raise ImproperlyConfigured(
                f"worker_state_db: {path} is not a wiretask state file (a Celery --statedb "
                "shelve holds pickles, which wiretask never loads: give another path)",
                setting="worker_state_db",
            ) from None
        if not isinstance(state, dict) or state.get("format") != STATEDB_FORMAT:
            raise ImproperlyConfigured(
                f"worker_state_db: {path} is not a wiretask state file", setting="worker_state_db"
            )
        if state.get("version") != STATEDB_VERSION:
            raise ImproperlyConfigured(
                f"worker_state_db: {path} has version {state.get('version')!r}; this "
                f"wiretask reads version {STATEDB_VERSION}", setting="worker_state_db",
            )
        cutoff = self._clock() - self.expires
        revoked = state.get("revoked") or []
        entries: list[tuple[str, float]] = [
            (str(item[0]), float(item[1])) for item in _pairs(revoked) if item[1] >= cutoff
        ]
        entries.sort(key=lambda entry: entry[1])
        for task_id, at in entries:
            self._ids.pop(task_id, None)
            self._ids[task_id] = at
        stamps = state.get("revoked_stamps") or {}
        if isinstance(stamps, dict):
            self._stamps = {str(h): list(v) for h, v in stamps.items() if isinstance(v, list)}
        clock = state.get("clock")
        self.saved_clock = clock if isinstance(clock, int) else 0
        self._purge()
        logger.info("worker state %s: %d revoked id(s) loaded", path, len(self._ids))


def _pairs(items: object) -> list[Sequence[Any]]:
    if not isinstance(items, list):
        return []
    return [
        item for item in items
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
        and isinstance(item[1], int | float) and not isinstance(item[1], bool)
    ]


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
