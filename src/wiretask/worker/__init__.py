"""The reference worker: consume task messages, honour eta and expires, run, report.

A ``Worker`` consumes one or more queues through its own transport, runs each task in a
pool of threads (default) or child processes, or one at a time in its consumer thread
(``pool="solo"``, like Celery's ``-P solo``), stores its states in the app's result
backend and sends its callbacks, and **acknowledges a message only after its task ran
and its outcome was stored** (at least once). It runs what Celery sends, and what it
sends back (callbacks, retries) runs on Celery.

Use it from Python::

    with Worker(app, queues=["celery"], concurrency=4):
        ...                                   # tasks run in the background

or block in it, as the ``wiretask worker`` command does (SIGTERM/SIGINT stop it
cleanly; a second one stops it at once, requeueing what is still running)::

    Worker(app, concurrency=4).run()

How it differs from Celery's worker, each for a reason written in ``spec/PROTOCOL.md``
("Worker"): an early eta message is re-published with a broker-side delay instead of
being held unacked (no visibility-timeout duplicates, no pile-up in memory); held eta
messages are bounded (``worker_eta_task_limit``); a message whose outcome could not be
stored is requeued rather than acked.

The parts, one module each (a message meets them in this order):

* ``facade``: the ``Worker`` itself: arguments, start/stop/run, signals, introspection.
* ``consumer``: the receive loop (room, ``receive_many``, ``due()``, held etas).
* ``routing``: decode, then a pipeline of small steps (unregistered tasks, early etas,
  rate limits) before a message is dispatched to the pool as a ``job.Job``; ``ledger`` counts what
  is dispatched and held (``eta``: the heap of early-eta messages).
* ``pools``: what runs the jobs, behind one interface (``pools.base.Pool``): threads,
  solo, processes.
* ``tracer`` (and ``links``): runs one message: states, body, callbacks, errbacks; it
  takes a ``Control`` (time limits) and returns an ``Outcome`` (``outcome``).
  ``canvas``: its chord parts and the failures it carries through a chain;
  ``builtins``: Celery's built-in tasks (``celery.chord_unlock``, ``celery.map``, ...).
* ``settlement``: ack once, after the outcome is stored; batched acks that also take
  the next messages; ack retry; requeue with a pause.
"""

from __future__ import annotations

from wiretask.errors import WorkerLostError

# The worker's timings and pool names are importable from here as before the split
# (tuning, not API: only ``__all__`` is).
from wiretask.worker.consumer import DUE_INTERVAL as DUE_INTERVAL
from wiretask.worker.consumer import MAX_BROKER_BACKOFF as MAX_BROKER_BACKOFF
from wiretask.worker.facade import DEFAULT_ETA_TASK_LIMIT, Worker
from wiretask.worker.ledger import POLL_INTERVAL as POLL_INTERVAL
from wiretask.worker.pools.base import PoolName as PoolName
from wiretask.worker.pools.solo import SOLO_FLUSH_INTERVAL as SOLO_FLUSH_INTERVAL
from wiretask.worker.settlement import ACK_RETRY_INTERVAL as ACK_RETRY_INTERVAL
from wiretask.worker.settlement import REQUEUE_PAUSE as REQUEUE_PAUSE

__all__ = ["DEFAULT_ETA_TASK_LIMIT", "Worker", "WorkerLostError"]
