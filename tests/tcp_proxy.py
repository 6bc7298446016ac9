"""A TCP proxy on 127.0.0.1 for tests that play network faults in front of a real server.

* **A moved name** (a failover): each new client is connected to the port ``target``
  holds when it arrives; open connections stay with the server they reached.
* **A frozen server** (``freeze()``): nothing is forwarded any more, either way, while
  every socket stays open. What a client writes is accepted, what the server sends is
  not passed on (both are dropped): the client sees a server that stops answering, as
  if its process were stopped, without stopping a server other tests share. A client
  arriving meanwhile is accepted and connected, and is not answered either.
* **Lost answers** (``lose_answers()``): on the connections open now, what the server
  sends is dropped while what clients write still reaches it: a connection that dies
  after a write landed, with the answer to it lost. New connections are not affected.
* **Counting**: ``open_connections`` is how many clients have not closed their end, so
  a test can tell that a client closed every connection it opened (the proxy reads the
  clients' sockets even while frozen, to see them close).
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Forwards every connection to ``127.0.0.1:target`` until ``close()``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._frozen = threading.Event()
        #: One event per open connection: set, its server's answers are dropped.
        self._answers_lost: list[threading.Event] = []
        self._open = 0
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def open_connections(self) -> int:
        """Clients connected now (accepted, and not closed by the client)."""
        with self._lock:
            return self._open

    def freeze(self) -> None:
        """Stop forwarding (both ways, every connection, new ones too); nothing is
        closed."""
        self._frozen.set()

    def lose_answers(self) -> None:
        """Drop what the server sends on the connections open now (not on new ones)."""
        with self._lock:
            for lost in self._answers_lost:
                lost.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            server.settimeout(None)
            lost = threading.Event()
            with self._lock:
                self._sockets += [client, server]
                self._answers_lost.append(lost)
                self._open += 1
            threading.Thread(target=self._pump, args=(client, server, None),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, lost),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket,
              lost: threading.Event | None) -> None:
        """Forward ``source`` to ``sink``: a client's writes (``lost`` is ``None``) or
        its server's answers (dropped once ``lost`` is set)."""
        from_client = lost is None
        try:
            while data := source.recv(65536):
                if not self._frozen.is_set() and (lost is None or not lost.is_set()):
                    sink.sendall(data)
                # Frozen: read and dropped, so that a client's close is still seen.
        except OSError:
            pass
        if from_client:
            with self._lock:
                self._open -= 1
        elif self._frozen.is_set() or (lost is not None and lost.is_set()):
            return  # nor does the close of a server whose answers are dropped
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        except OSError:
            pass
        self._listener.close()
        self._accepting.join(timeout=5)
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
