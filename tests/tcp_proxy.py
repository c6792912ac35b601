"""A TCP proxy on 127.0.0.1 in front of a database server, to cut or stall it on command.

``cut()`` drops every connection and refuses new ones (a database that went away);
``stall()`` keeps connections open but forwards nothing, either way (packets dropped);
``restore()`` serves normally again.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class TCPProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._state = "open"  # open | stalled | cut
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def in_front_of(cls, url: str) -> tuple[TCPProxy, str]:
        """A proxy for the server of database ``url``, and the URL that goes through it."""
        parts = urlsplit(url)
        proxy = cls(parts.hostname or "127.0.0.1", parts.port or 0)
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        netloc = f"{user}127.0.0.1:{proxy.port}"
        return proxy, urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def cut(self) -> None:
        with self._lock:
            self._state = "cut"
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def stall(self) -> None:
        with self._lock:
            self._state = "stalled"

    def restore(self) -> None:
        with self._lock:
            self._state = "open"

    def close(self) -> None:
        self._stopped = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._state == "cut":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._stopped:
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                if self._state == "stalled":
                    continue  # read nothing, forward nothing: the peer hears silence
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            for sock in peers:
                sock.close()
