"""Routers given by dotted path in the routing tests (``task_routes`` strings)."""

from __future__ import annotations

from typing import Any


def by_first_argument(name: str, args: Any, kwargs: Any, options: Any,
                      task: Any = None, **kw: Any) -> Any:
    """Route ``*.resize`` calls by their first argument; leave the rest alone."""
    if name.endswith(".resize") and args:
        return {"queue": f"images-{args[0]}"}
    return None


class OldStyle:
    """A pre-4.0 router class: Celery instantiates it and calls ``route_for_task``."""

    def route_for_task(self, task: str, args: Any = None, kwargs: Any = None) -> Any:
        return "legacy" if task.endswith(".old") else None
