"""Redis plumbing shared by the Redis transport and the Redis result backend.

* ``client``: ``Commands``, the lean socket client of the hot paths, and ``Target``, the
  identity of a Redis database (how a broker knows a result backend shares its database).
* ``scripts``: the Lua scripts, each with the builder that owns its ``KEYS``/``ARGV``.
* ``keys``: the key names (Kombu's layout) behind ``global_keyprefix``.
* ``options``: the transport's URL and keyword options, parsed once.
* ``errors``: ``REDIS_ERRORS``, the table that translates redis-py's exceptions, and
  ``Boundaries``, the error boundaries built on it for the users of a pool.

Nothing here imports ``wiretask.transports`` or ``wiretask.results``; both import this.
"""
