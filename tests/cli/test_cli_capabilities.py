"""``wiretask inspect`` detects the ``Inspection`` capability by type and says so when a
transport does not offer it."""

from __future__ import annotations

from .conftest import CLI

BLIND = '''
from wiretask.app import App
from wiretask.protocol.frame import Outgoing
from wiretask.transports.base import Transport
from wiretask.transports.memory import MemoryTransport


class Blind(Transport):
    """The memory broker through the core contract only: no size, peek or dead letters."""

    capabilities = MemoryTransport.capabilities

    def __init__(self):
        self.inner = MemoryTransport("blind")
        self.url = "blind://"

    def connect(self):
        self.inner.connect()

    def close(self):
        self.inner.close()

    def _publish(self, messages):
        self.inner.publish_many([Outgoing(m.frame, m.route, m.not_before) for m in messages])

    def _receive(self, queues, timeout):
        return self.inner.receive(queues, timeout=timeout)  # settles through the inner one

    def _settle(self, delivery, how, reason):
        raise AssertionError("the inner transport's deliveries settle themselves")


app = App("blind", transport=Blind, backend="memory://blind")
'''


def test_inspect_says_when_the_transport_cannot_inspect(cli: CLI) -> None:
    (cli.cwd / "proj" / "blind.py").write_text(BLIND)
    env = {k: v for k, v in cli.env.items() if k != "WIRETASK_BROKER_URL"}
    cli.env = env

    done = cli.run("queue", "show", "-A", "proj.blind:app", "celery")

    assert done.returncode == 1, done
    assert ("the broker blind:// cannot show a queue without consuming it (its transport "
            "does not offer Inspection)") in done.stderr
    assert "Traceback" not in done.stderr
