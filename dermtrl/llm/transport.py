"""HTTP for :class:`~dermtrl.llm.client.LLMClient`: JSON POSTs over kept-alive connections, nothing more.

Why not the ``openai`` package's client: building, sending and validating one request through it costs about
1.3 ms of CPU (request transforms, pydantic models, httpx's layers), which at 64 requests in flight made the
judge CPU-bound long before the server was (21.8x of an ideal 64x at 100 ms latency). The standard library's
``http.client`` does the same POST in about 0.15 ms. The client keeps every policy (retries, backoff, errors,
cache) itself, so what it needs from HTTP is small: a status, the headers and the body, or one of two errors.

Connections are pooled and reused (HTTP/1.1 keep-alive); one the server has closed while idle is noticed before
reuse and replaced, so a dropped idle connection is never reported as a failed request. ``HTTPS_PROXY`` /
``HTTP_PROXY`` / ``NO_PROXY`` are honoured (loopback addresses never go through a proxy); TLS verifies against
``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set, else certifi's certificates when installed, as httpx does, else the
system's.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping

__all__ = ["HTTPTransport", "TransportError"]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_IDLE_KEPT = 256  # idle connections kept for reuse (one per request in flight is plenty)


class TransportError(Exception):
    """A request that got no HTTP answer: ``kind`` is ``"timeout"``, ``"connection error"`` or ``"certificate"``
    (the server's TLS certificate was not accepted)."""

    def __init__(self, kind: str, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__)
        self.kind = kind
        self.cause = cause


def _ssl_context() -> ssl.SSLContext:
    """``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set (a company's own CA), else certifi's, else the system's."""
    cafile, capath = os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """The proxy (host, port) the environment names for this URL, or ``None``."""
    if host in _LOOPBACK or host.startswith("127."):
        return None
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or 8080


class HTTPTransport:
    """POST JSON bodies to one base URL; thread-safe (each request takes a pooled connection of its own)."""

    def __init__(self, base_url: str, headers: Mapping[str, str]) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        self._proxy = _proxy_for(self.scheme, self.host)
        self._ssl = _ssl_context() if self.scheme == "https" else None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        host, port = self._proxy if self._proxy is not None else (self.host, self.port)
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl)
            if self._proxy is not None:
                conn.set_tunnel(self.host, self.port)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.connect()
        if conn.sock is not None:  # headers and body may go out in two writes: no Nagle delay between them
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _take(self, timeout: float) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(timeout)
            sock = conn.sock
            try:  # readable while idle means the server closed it (or sent garbage): never reuse it
                stale = sock is None or bool(select.select([sock], [], [], 0)[0])
            except (OSError, ValueError):
                stale = True
            if not stale:
                sock.settimeout(timeout)  # type: ignore[union-attr]
                return conn
            conn.close()

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < _IDLE_KEPT:
                self._idle.append(conn)
                return
        conn.close()

    def post(self, path: str, body: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """POST ``body`` to ``<base_url><path>``: (status, headers with lower-case names, body), or raise
        :class:`TransportError`. ``timeout`` bounds the connection and every wait for the server's bytes."""
        url = self.prefix + path
        if self._proxy is not None and self.scheme == "http":
            url = f"http://{self.host}:{self.port}{url}"  # a plain-HTTP proxy takes the absolute URL
        conn: http.client.HTTPConnection | None = None
        try:
            conn = self._take(timeout)
            conn.request("POST", url, body=body, headers=self.headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError as exc:
            if conn is not None:
                conn.close()
            raise TransportError("timeout", exc) from None
        except ssl.SSLCertVerificationError as exc:  # no retry can change a certificate
            if conn is not None:
                conn.close()
            raise TransportError("certificate", exc) from None
        except (OSError, http.client.HTTPException) as exc:
            if conn is not None:
                conn.close()
            raise TransportError("connection error", exc) from None
        headers = {name.lower(): value for name, value in response.getheaders()}
        if response.will_close:
            conn.close()
        else:
            self._give(conn)
        return response.status, headers, data

    def close(self) -> None:
        """Close every idle connection; requests still in flight close theirs when they finish."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
