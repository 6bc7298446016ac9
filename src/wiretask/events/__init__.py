"""Celery's events: task and worker events on Celery's event exchange, so that
``celery events``, Flower and wiretask's own tools see wiretask workers and clients.

* ``wire``: the event format and its frame (pure), exactly Celery's.
* ``dispatcher``: ``EventDispatcher``, fire-and-forget sending off the caller's thread.
* ``worker``: the worker's events (task events, heartbeats, the control commands).
* ``receiver``: ``EventReceiver``, reading events (``wiretask events``, the exporter).

The transport part is ``wiretask.transports.base.Broadcast``; ``spec/events.md`` is the
normative description of what goes on the wire.
"""

from __future__ import annotations
