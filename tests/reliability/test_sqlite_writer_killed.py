"""A SQLite writer killed mid-transaction (issue 13's campaign): the file stays intact,
every batch is all there or not there at all, and what is there is consumed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from wiretask.transports.sqlite import SQLiteTransport

from .support import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BATCH = 50

WRITER = textwrap.dedent("""
    import sys
    from wiretask.protocol.frame import Frame, Outgoing, Route
    from wiretask.transports.sqlite import SQLiteTransport

    transport = SQLiteTransport(sys.argv[1])
    transport.connect()
    batch = 0
    while True:
        transport.publish_many([
            Outgoing(Frame(body=b"x" * 2000, content_type="application/json",
                           content_encoding="utf-8", headers={"id": f"{batch}-{i}"}),
                     Route("q"))
            for i in range({batch_size})
        ])
        batch += 1
        print(batch, flush=True)
""").replace("{batch_size}", str(BATCH))


@pytest.mark.parametrize("round_", range(5))
def test_a_writer_killed_mid_transaction_leaves_whole_batches(tmp_path: Path,
                                                              round_: int) -> None:
    path = tmp_path / "broker.db"
    SQLiteTransport(path).connect()  # the schema, before the writer races for it
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        wait_until(lambda: writer.stdout is not None and writer.stdout.readline().strip() != "",
                   30, "the writer to commit a batch")
        time.sleep(random.Random(round_).uniform(0.0, 0.3))  # somewhere in a transaction
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait(10)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    transport = SQLiteTransport(path)
    try:
        ids: list[str] = []
        while (delivery := transport.receive(["q"], timeout=0)) is not None:
            ids.append(str(delivery.frame.headers["id"]))
            delivery.ack()
    finally:
        transport.close()
    batches = Counter(i.split("-")[0] for i in ids)
    assert batches, "nothing was committed"
    assert set(batches.values()) == {BATCH}, "a batch is partly there"
    assert len(ids) == len(set(ids))
