"""Beat's schedule file: the last run of each entry, as Celery's ``celerybeat-schedule``.

Celery keeps it in a ``shelve`` (pickle) database; wiretask writes JSON, replacing the
file atomically (a new file renamed over the old one, after ``fsync``) after every send,
so a crash never leaves half a file and never loses a send that returned. The file
records the time zone it was written in; when the app's ``timezone`` changes, the
history is reset, as Celery's ``PersistentScheduler`` does ("Reset: Timezone changed").

A file that is not a wiretask schedule (a Celery beat's shelve database left in the
project directory, say) is refused by path, not overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from wiretask.errors import ImproperlyConfigured

__all__ = ["FORMAT", "Run", "ScheduleFile", "run_from_json", "run_to_json"]

log = logging.getLogger("wiretask.beat")

#: The ``format`` field of a schedule file.
FORMAT = "wiretask.beat.schedule"
VERSION = 1


@attrs.frozen
class Run:
    """When an entry was last sent (aware) and how many times it has been sent."""

    last_run_at: datetime
    total_run_count: int


def run_to_json(run: Run) -> dict[str, Any]:
    return {"last_run_at": run.last_run_at.isoformat(), "total_run_count": run.total_run_count}


def run_from_json(value: Any) -> Run:
    """A ``Run`` from its JSON form.

    Raises:
        ValueError, TypeError, KeyError: not one (the caller names the place).
    """
    if not isinstance(value, Mapping):
        raise TypeError(f"a run is an object, got {value!r}")
    at = datetime.fromisoformat(str(value["last_run_at"]))
    count = value["total_run_count"]
    if at.tzinfo is None or isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"not a run: {value!r}")
    return Run(at, count)


class ScheduleFile:
    """The schedule file at ``path`` (``-s/--schedule``, ``beat_schedule_filename``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()

    def __repr__(self) -> str:
        return f"<ScheduleFile {self.path}>"

    def _refuse(self, why: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(
            f"{self.path} is not a wiretask beat schedule file ({why}); it may be a Celery "
            "beat's shelve database: remove it, or give beat another path with "
            "-s/--schedule (beat_schedule_filename)",
            setting="beat_schedule_filename",
        )

    def _read(self) -> dict[str, Any] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ImproperlyConfigured(
                f"cannot read the beat schedule file {self.path}: {exc}",
                setting="beat_schedule_filename",
            ) from exc
        if not data.strip():
            return None  # an empty file: no history yet
        try:
            document = json.loads(data)
        except ValueError:
            raise self._refuse("not JSON") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise self._refuse(f"no 'format': {FORMAT!r}")
        if document.get("version") != VERSION:
            raise self._refuse(f"version {document.get('version')!r}, this wiretask reads "
                               f"{VERSION}")
        return document

    def check(self) -> None:
        """Refuse now a file that ``load`` would refuse, and a directory that cannot be
        written (before beat starts rather than at its first send)."""
        directory = self.path.parent
        if not directory.is_dir():
            raise ImproperlyConfigured(
                f"beat cannot write its schedule file {self.path}: {directory} is not a "
                "directory (give another path with -s/--schedule)",
                setting="beat_schedule_filename",
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ImproperlyConfigured(
                f"beat cannot write its schedule file {self.path}: the directory "
                f"{directory} is not writable (give another path with -s/--schedule)",
                setting="beat_schedule_filename",
            )
        self._read()

    def load(self, timezone: str) -> dict[str, Run]:
        """The runs in the file, by entry name; none if it was written in another time
        zone (Celery's reset, logged as a warning).

        Raises:
            ImproperlyConfigured: the file is not a wiretask schedule file.
        """
        document = self._read()
        if document is None:
            return {}
        stored = document.get("tz")
        if stored != timezone:
            log.warning("Reset: Timezone changed from %r to %r", stored, timezone)
            return {}
        entries = document.get("entries")
        if not isinstance(entries, dict):
            raise self._refuse("'entries' is not an object")
        runs = {}
        for name, value in entries.items():
            try:
                runs[name] = run_from_json(value)
            except (ValueError, KeyError, TypeError):
                raise self._refuse(f"entry {name!r} is not a run") from None
        return runs

    def save(self, timezone: str, runs: Mapping[str, Run]) -> None:
        """Write the file: to a temporary file in the same directory, flushed to disk,
        then renamed over the old one.

        Raises:
            OSError: the file cannot be written.
        """
        document = {
            "format": FORMAT,
            "version": VERSION,
            "tz": timezone,
            "utc_enabled": True,
            "entries": {name: run_to_json(run) for name, run in runs.items()},
        }
        data = json.dumps(document, indent=1, sort_keys=True).encode()
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
