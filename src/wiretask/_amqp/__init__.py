"""Plumbing below the AMQP 0-9-1 transport (py-amqp, the driver Kombu uses).

* ``options``: the broker URL and the transport options, parsed once and frozen.
* ``errors``: the one table that turns py-amqp and socket errors into wiretask's.
* ``wire``: a ``Frame`` to and from a py-amqp message (properties, header types).
* ``topology``: what Celery declares (queues, exchanges, the delay ladder), as values.
* ``link``: one locked py-amqp connection, with waits that do not hold its lock.

Nothing here imports ``wiretask.transports`` or ``wiretask.results``: both may use it.
"""
