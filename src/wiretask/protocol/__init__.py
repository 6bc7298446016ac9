"""The pure protocol core: values and rules, no I/O, no clock reads (callers pass ``now``)."""

from wiretask.protocol.frame import Frame, Outgoing, Route

__all__ = ["Frame", "Outgoing", "Route"]
