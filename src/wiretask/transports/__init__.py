"""Transports: one module per broker, each a thin pump around the pure core."""

from wiretask.transports.base import Capabilities, DeadLetter, Delivery, Peeked, Transport

__all__ = ["Capabilities", "DeadLetter", "Delivery", "Peeked", "Transport"]
