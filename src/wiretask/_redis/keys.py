"""Key names of the Redis transport (Kombu's layout, ``spec/TRANSPORTS.md`` §1), behind
``global_keyprefix``."""

from __future__ import annotations

import attrs

__all__ = ["PRIORITY_STEPS", "Keys"]

#: Kombu's ``priority_steps``: a queue's lists are ``<queue>`` (bucket 0) and
#: ``<queue>\x06\x16<step>`` for the other steps.
PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)


@attrs.frozen(kw_only=True)
class Keys:
    """Every key name, with ``global_keyprefix`` applied wherever Kombu applies it."""

    prefix: str
    unacked: str
    unacked_index: str
    unacked_mutex: str
    delayed: str
    delayed_messages: str
    #: Without the prefix: the DUE script builds ``prefix + root + queue`` itself.
    delayed_queue_root: str = "_wiretask.delayed.queue."
    #: The leases of wiretask's own deliveries: tag -> the time its lease runs out.
    leases: str = attrs.field(
        default=attrs.Factory(lambda keys: f"{keys.prefix}_wiretask.leases", takes_self=True)
    )

    def p(self, name: str) -> str:
        return self.prefix + name

    def binding(self, exchange: str) -> str:
        return f"{self.prefix}_kombu.binding.{exchange}"

    def binding_permanent(self, exchange: str) -> str:
        return f"{self.prefix}_kombu.binding_permanent.{exchange}"

    @property
    def movers(self) -> str:
        """The movers' heartbeats (zset: mover id -> expiry, unix s)."""
        return f"{self.prefix}_wiretask.movers"

    def delayed_queue(self, queue: str) -> str:
        return self.prefix + self.delayed_queue_root + queue

    def dead(self, queue: str) -> str:
        return f"{self.prefix}{queue}.dead"
