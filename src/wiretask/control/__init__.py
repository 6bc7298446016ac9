"""Celery's remote-control channel: revoke, ping and inspect, both ways.

* ``wire``: the pidbox messages (pure: values to frames and back), exactly Celery's.
* ``client``: ``Control`` and ``Inspect``, what ``app.control`` is.
* ``revoked``: a worker's revoked-id store (bounded, expiring, optionally on disk).
* ``mailbox`` and ``commands``: the worker side, the thread that listens on the
  worker's control queue and the commands it answers.

The transport part is ``wiretask.transports.base.Broadcast``; ``spec/control.md`` is the
normative description of what goes on the wire.
"""

from __future__ import annotations

from wiretask.control.client import Control, Inspect, flatten_reply

__all__ = ["Control", "Inspect", "flatten_reply"]
