"""A TCP relay the tests put between one party and another (clients and ingest, a mesh's services
and Cassandra, a processor and Redis) so that they can fail that path alone: cut every connection
mid-stream, refuse new ones as a stopped server would, or stop passing bytes as a hung one would.
Not a stand-in for any part of the mesh: bytes pass through untouched."""

from __future__ import annotations

import socket
import threading

__all__ = ["Relay"]

_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends a reset


class Relay:
    def __init__(self, target_port: int, port: int = 0) -> None:
        self._target = ("127.0.0.1", target_port)
        self._server = socket.create_server(("127.0.0.1", port))
        self.port = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._flowing = threading.Event()  # cleared while hung: no byte passes either way
        self._flowing.set()
        self._refusing = False
        self.cuts = 0
        self.accepted = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
                self.accepted += 1
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self._flowing.wait()
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()  # bytes read as the relay hung are held until it resumes
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Reset every open connection, as a network failure would; new ones are accepted."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            _reset(s)
        self.cuts += 1

    def block(self) -> None:
        """Reset every open connection and every new one until :meth:`restore`: the far side
        looks stopped (connections fail at once)."""
        self._refusing = True
        self.cut()

    def hang(self) -> None:
        """Pass no byte either way until :meth:`restore`, keeping connections open: the far side
        looks hung (requests wait until the caller's own timeout)."""
        self._flowing.clear()

    def restore(self) -> None:
        """Accept and pass bytes again (after :meth:`block` or :meth:`hang`)."""
        self._refusing = False
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self.restore()
        self.cut()


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        s.close()
    except OSError:
        pass
