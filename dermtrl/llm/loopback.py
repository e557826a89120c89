"""What the project's test servers share: a threaded HTTP server on 127.0.0.1 with a bounded start and stop.

Tests must never hang on a server: :meth:`LoopbackServer.stop` bounds every wait, and serving threads are
daemons. Subclasses give the request handler and may hook start and stop.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar


class LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's listen backlog is 5: a client opening 64 connections at once has most of its SYNs dropped and
    # retried a second later, which no real server (uvicorn, vLLM, llama.cpp: hundreds or more) would do
    request_queue_size = 1024
    owner: Any  # the LoopbackServer that started it; handlers reach their state through it

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, disconnect faults, stop()) are expected, not errors.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class LoopbackServer:
    """Serve ``handler_class`` on a free port of 127.0.0.1 (or :attr:`host` and :attr:`bind_port`) from a daemon
    thread; a context manager."""

    handler_class: ClassVar[type[BaseHTTPRequestHandler]]
    thread_name: ClassVar[str] = "loopback-server"
    host: str = "127.0.0.1"  # the address served on (loopback unless a caller chooses otherwise)
    bind_port: int = 0  # 0: a free port, chosen by the system

    _server: LoopbackHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self):
        if self._server is not None:
            return self
        self._on_start()
        server = LoopbackHTTPServer((self.host, self.bind_port), self.handler_class)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and join the thread; every wait is bounded by ``timeout``."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._on_stop()
        if thread is not None and thread.is_alive():
            done = threading.Thread(target=server.shutdown, daemon=True)
            done.start()
            done.join(timeout)
        self._after_shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)
        self._server = self._thread = None

    def _on_start(self) -> None:
        """Hook: reset state before serving."""

    def _on_stop(self) -> None:
        """Hook: wake handlers that are sleeping before the server shuts down."""

    def _after_shutdown(self) -> None:
        """Hook: close connections the server no longer serves."""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._server.server_address[1])
