"""HTTP for :class:`~dermtrl.llm.client.LLMClient`: JSON POSTs over kept-alive connections, nothing more.

Why not the ``openai`` package's client: building, sending and validating one request through it costs about
1.3 ms of CPU (request transforms, pydantic models, httpx's layers), which at 64 requests in flight made the
judge CPU-bound long before the server was (21.8x of an ideal 64x at 100 ms latency). The standard library's
``http.client`` does the same POST in about 0.15 ms. The client keeps every policy (retries, backoff, errors,
cache) itself, so what it needs from HTTP is small: a status, the headers and the body, or one of two errors.

``http.client`` opens each connection (TLS, a proxy's CONNECT tunnel); the exchange over it is this module's own,
because two of ``http.client``'s steps cost more CPU than the rest of a call's HTTP together: it writes the headers
and the body in two sends (two trips through the loopback stack, and the server wakes twice), and it parses the
answer's headers with the ``email`` package (about 60 us). Here a request goes out in one send, and the status
line and headers are read as HTTP/1.1 defines them: interim 1xx answers skipped, the body read by
``Content-Length``, as chunks, or to the end of the connection, which is then not reused. A POST and its answer
then cost about 0.04 ms of CPU (0.17 ms through ``http.client``, measured against the loopback server).

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
from typing import BinaryIO

__all__ = ["HTTPTransport", "TransportError"]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_IDLE_KEPT = 256  # idle connections kept for reuse (one per request in flight is plenty)
_MAX_LINE = 65536  # the longest status or header line accepted (http.client's limit)
_MAX_HEADERS = 100  # the most header lines accepted in one answer (http.client's limit)


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


class _Connection:
    """A kept-alive connection: the socket ``http.client`` opened, and a buffered reader of its answers."""

    __slots__ = ("conn", "reader")

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.reader = conn.sock.makefile("rb")  # type: ignore[union-attr]

    def close(self) -> None:
        self.reader.close()  # the socket stays open while a file made from it is
        self.conn.close()


def _line(reader: BinaryIO) -> bytes:
    line = reader.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise http.client.LineTooLong("header line")
    return line


def _read_head(reader: BinaryIO) -> tuple[bytes, int, dict[str, str]]:
    """The HTTP version, status and headers (lower-case names; a repeated one keeps its last value) of the next
    final answer, skipping interim 1xx ones."""
    while True:
        line = _line(reader)
        if not line:
            raise http.client.RemoteDisconnected("the server closed the connection without answering")
        version, _, rest = line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise http.client.BadStatusLine(line.decode("latin-1", "replace").rstrip()[:80])
        headers: dict[str, str] = {}
        while True:
            line = _line(reader)
            if line in (b"\r\n", b"\n", b""):
                break
            if len(headers) >= _MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")
            name, colon, value = line.decode("latin-1").partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        status = int(code)
        if not 100 <= status < 200:
            return version, status, headers


def _read_chunked(reader: BinaryIO) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = _line(reader).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise http.client.HTTPException(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            while _line(reader) not in (b"\r\n", b"\n", b""):  # trailers, if any
                pass
            return b"".join(parts)
        parts.append(_read_exactly(reader, size))
        _line(reader)  # the CRLF after each chunk


def _read_exactly(reader: BinaryIO, size: int) -> bytes:
    data = reader.read(size)
    if len(data) < size:
        raise http.client.IncompleteRead(data, size - len(data))
    return data


def _read_answer(reader: BinaryIO) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers, body, whether the connection must close) of the answer to a POST."""
    version, status, headers = _read_head(reader)
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    close = "close" in tokens or (version == b"HTTP/1.0" and "keep-alive" not in tokens)
    if status in (204, 304):
        return status, headers, b"", close
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, headers, _read_chunked(reader), close
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise http.client.HTTPException(f"bad Content-Length {length[:20]!r}")
        return status, headers, _read_exactly(reader, int(length)), close
    return status, headers, reader.read(), True  # no length given: the body ends with the connection


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
        self._fixed = self._fixed_headers()
        self._heads: dict[str, bytes] = {}
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _fixed_headers(self) -> bytes:
        """Every request's headers but its length, checked once: a value with a line break would end the headers
        early and smuggle in others (the error names the header, never its value: it may hold the API key)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        lines = [f"Host: {host}" if self.port == default else f"Host: {host}:{self.port}",
                 "Accept-Encoding: identity"]  # no header would mean any coding is acceptable (RFC 9110)
        for name, value in self.headers.items():
            if not name or any(c in name for c in ":\r\n") or any(c in str(value) for c in "\r\n\0"):
                raise ValueError(f"HTTP header {name!r} has a character a header cannot hold (a line break, or a "
                                 "colon in its name)")
            lines.append(f"{name}: {value}")
        try:
            return ("\r\n".join(lines) + "\r\n").encode("latin-1")
        except UnicodeEncodeError as exc:
            header = next(n for n, v in self.headers.items() if not f"{n}{v}".isascii())
            raise ValueError(f"HTTP header {header!r} has a character outside Latin-1 (position {exc.start} of "
                             "the headers)") from None

    def _head(self, path: str) -> bytes:
        """The request line and headers for ``path``, up to the Content-Length value."""
        head = self._heads.get(path)
        if head is None:
            url = self.prefix + path
            if self._proxy is not None and self.scheme == "http":
                url = f"http://{self.host}:{self.port}{url}"  # a plain-HTTP proxy takes the absolute URL
            head = f"POST {url} HTTP/1.1\r\n".encode("ascii") + self._fixed + b"Content-Length: "
            self._heads[path] = head
        return head

    def _connect(self, timeout: float) -> _Connection:
        host, port = self._proxy if self._proxy is not None else (self.host, self.port)
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl)
            if self._proxy is not None:
                conn.set_tunnel(self.host, self.port)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.connect()
        if conn.sock is None:
            raise http.client.HTTPException("the connection has no socket after connecting")
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one send per request: send it now
        return _Connection(conn)

    def _take(self, timeout: float) -> _Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(timeout)
            sock = conn.conn.sock
            try:  # readable while idle means the server closed it (or sent garbage): never reuse it
                stale = sock is None or bool(select.select([sock], [], [], 0)[0])
            except (OSError, ValueError):
                stale = True
            if not stale:
                sock.settimeout(timeout)  # type: ignore[union-attr]
                return conn
            conn.close()

    def _give(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < _IDLE_KEPT:
                self._idle.append(conn)
                return
        conn.close()

    def post(self, path: str, body: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """POST ``body`` to ``<base_url><path>``: (status, headers with lower-case names, body), or raise
        :class:`TransportError`. ``timeout`` bounds the connection and every wait for the server's bytes."""
        request = b"%s%d\r\n\r\n%s" % (self._head(path), len(body), body)  # one send: headers and body
        conn: _Connection | None = None
        try:
            conn = self._take(timeout)
            conn.conn.sock.sendall(request)  # type: ignore[union-attr]
            status, headers, data, close = _read_answer(conn.reader)
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
        if close:
            conn.close()
        else:
            self._give(conn)
        return status, headers, data

    def close(self) -> None:
        """Close every idle connection; requests still in flight close theirs when they finish."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
