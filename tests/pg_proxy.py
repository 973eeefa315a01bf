"""A loopback TCP proxy in front of a real PostgreSQL server, which can make it go silent.

``refusing``: every connection is closed at once (the server is down).
``swallowing``: connections are accepted and nothing ever comes back, not
even to the login (a host that hangs, a network path that drops packets).
``silent``: the login goes through, but queries are never passed on, and
nothing more comes back (a server, or a network path, that hangs after the
login).  None of these: bytes pass both ways untouched.

The client's side is read as PostgreSQL's protocol: the untyped messages of
the start-up (SSLRequest, GSSENCRequest, StartupMessage), then typed ones
(``Q`` is a query).  That is all the proxy needs to know where the login ends.
"""

from __future__ import annotations

import socket
import struct
import threading

_PROTOCOL_3 = 196608  # the StartupMessage's version; SSL and GSS requests use other codes


class Proxy:
    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.refusing = threading.Event()
        self.swallowing = threading.Event()
        self.silent = threading.Event()
        self.held_queries = 0  # queries the proxy kept from the server
        self._sockets: list = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing.is_set():
                client.close()
                continue
            if self.swallowing.is_set():
                with self._lock:
                    self._sockets.append(client)  # open, and never answered
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            login = {"over": False}  # set at the client's first query
            threading.Thread(target=self._client_to_server, args=(client, server, login), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(server, client, login), daemon=True).start()

    def _server_to_client(self, server, client, login: dict) -> None:
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                if self.silent.is_set() and login["over"]:
                    continue  # answers to queries go nowhere
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, server)

    def _client_to_server(self, client, server, login: dict) -> None:
        buffer = b""
        started = False
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                buffer += data
                while True:
                    if not started:  # untyped: length (with itself), then a code
                        if len(buffer) < 8:
                            break
                        length = struct.unpack("!I", buffer[:4])[0]
                        if len(buffer) < length:
                            break
                        started = struct.unpack("!I", buffer[4:8])[0] == _PROTOCOL_3
                        message, buffer = buffer[:length], buffer[length:]
                    else:
                        if len(buffer) < 5:
                            break
                        length = struct.unpack("!I", buffer[1:5])[0] + 1
                        if len(buffer) < length:
                            break
                        message, buffer = buffer[:length], buffer[length:]
                        if message[:1] == b"Q":
                            login["over"] = True
                            if self.silent.is_set():
                                self.held_queries += 1
                                continue
                    server.sendall(message)
        except OSError:
            pass
        finally:
            _close(client, server)

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        _close(*sockets)


def _close(*sockets) -> None:
    for sock in sockets:
        try:
            sock.close()
        except OSError:
            pass
