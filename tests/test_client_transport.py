"""The client's HTTP layer against a real loopback server: kept-alive connections, an idle connection the server
closed replaced without a failed request, the request's JSON as the OpenAI API takes it (extra_body merged)."""

from __future__ import annotations

import json

import pytest

from dermtrl.llm.client import ClientConfig, LLMClient, user_message
from dermtrl.llm.transport import HTTPTransport, TransportError
from dermtrl.testing import DEFAULT_SCORE_TEXT

pytestmark = pytest.mark.timeout(60)


def test_connections_are_kept_alive_and_a_closed_idle_one_is_replaced(make_openai_server):
    server = make_openai_server()
    with LLMClient(ClientConfig(base_url=server.base_url, model="m", max_retries=0)) as client:
        for i in range(5):
            assert client.complete([user_message(f"q{i}")]).text == DEFAULT_SCORE_TEXT
        assert server.connections_accepted == 1  # five requests, one connection
        server.close_idle_connections()  # as servers do with keep-alive connections idle for a while
        assert client.complete([user_message("after the close")]).text == DEFAULT_SCORE_TEXT
        assert server.connections_accepted == 2
        assert client.usage.retries == 0 and client.usage.failures == 0  # noticed before reuse, not a failure


def test_the_request_body_is_what_the_openai_api_takes(make_openai_server):
    server = make_openai_server()
    config = ClientConfig(base_url=server.base_url, model="m", max_tokens=64, seed=7, temperature=0.0,
                          extra_body={"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}},
                          response_format="scores")
    with LLMClient(config) as client:
        client.complete([user_message("ünïcode text")])
    (request,) = server.chat_requests
    body = request["body"]
    assert body["model"] == "m" and body["max_tokens"] == 64 and body["seed"] == 7 and body["temperature"] == 0.0
    assert body["top_k"] == 20 and body["chat_template_kwargs"] == {"enable_thinking": False}  # merged, as openai
    assert body["response_format"]["type"] == "json_schema"
    assert body["messages"] == [{"role": "user", "content": "ünïcode text"}]
    assert request["headers"]["content-type"] == "application/json"


def test_no_server_is_a_connection_error_and_a_bad_url_is_refused():
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = HTTPTransport(f"http://127.0.0.1:{port}/v1", {})
    with pytest.raises(TransportError) as info:
        transport.post("/chat/completions", json.dumps({}).encode(), 2.0)
    assert info.value.kind == "connection error" and "Connection" in str(info.value)
    with pytest.raises(ValueError, match="base_url"):
        HTTPTransport("ftp://example.org", {})


def test_https_verifies_the_certificate_against_ssl_cert_file(tmp_path, monkeypatch):
    """An HTTPS endpoint with its own CA (a company's, here a self-signed one): refused until SSL_CERT_FILE
    names it, then answered."""
    import shutil
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dermtrl.llm.client import LLMError

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"model": "m", "choices": [{"message": {"content": "secure"},
                                                          "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/v1"
    try:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        with LLMClient(ClientConfig(base_url=url, model="m", max_retries=3, timeout=10)) as client:
            with pytest.raises(LLMError, match="TLS certificate not accepted .*SSL_CERT_FILE"):
                client.complete([user_message("hi")])
            assert client.usage.retries == 0  # no retry can change a certificate
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with LLMClient(ClientConfig(base_url=url, model="m", max_retries=0, timeout=10)) as client:
            assert client.complete([user_message("hi")]).text == "secure"
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_proxy_from_the_environment_is_used(make_openai_server, monkeypatch):
    """HTTP_PROXY is honoured for a remote host (the proxy gets the absolute URL); loopback never goes through it."""
    import threading
    import urllib.parse
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    server = make_openai_server()
    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
            seen.append(self.path)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            target = server.base_url.rsplit("/v1", 1)[0] + urllib.parse.urlsplit(self.path).path
            request = urllib.request.Request(target, data=body, headers={"Content-Type": "application/json"})
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # not back through ourselves
            with direct.open(request, timeout=10) as upstream:
                data = upstream.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with LLMClient(ClientConfig(base_url="http://judge.invalid:8000/v1", model="m", max_retries=0)) as client:
            assert client.complete([user_message("via the proxy")]).text == DEFAULT_SCORE_TEXT
        assert seen == ["http://judge.invalid:8000/v1/chat/completions"]
        with LLMClient(ClientConfig(base_url=server.base_url, model="m", max_retries=0)) as client:
            client.complete([user_message("direct")])
        assert len(seen) == 1 and server.calls == 2
    finally:
        proxy.shutdown()
        proxy.server_close()


class _Scripted:
    """A loopback TCP server answering each request (read through its Content-Length) with the next scripted bytes,
    then closing the connection if the script says so; it records every raw request and connection."""

    def __init__(self, answers: list[tuple[bytes, bool]]) -> None:
        import socket
        import threading

        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(10)
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(10)
                reader = conn.makefile("rb")
                while self.answers:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = reader.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    length = int(next(v for k, v in (ln.split(b":", 1) for ln in head.split(b"\r\n")[1:] if b":" in ln)
                                      if k.strip().lower() == b"content-length"))
                    self.requests.append(head + reader.read(length))
                    answer, close = self.answers.pop(0)
                    conn.sendall(answer)
                    if close:
                        break
                reader.close()

    def stop(self) -> None:
        self._sock.close()
        self._thread.join(5)


_OK = b'{"ok": true}'


def test_answers_are_read_as_http_1_1_defines_them():
    """Interim 1xx answers are skipped; a body comes by Content-Length, as chunks (extensions and trailers
    ignored) or up to the end of an HTTP/1.0 connection; a repeated header keeps its last value; a connection the
    server closes or asks to close is not reused, every other one is."""
    answers = [
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Seen: a\r\nX-Seen: b\r\n\r\n"
         + _OK, False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\n{\"ok\"\r\n7\r\n: true}\r\n0\r\n"
         b"Trailer: x\r\n\r\n", False),
        (b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n", True),
        (b"HTTP/1.0 200 OK\r\n\r\n" + _OK, True),  # no length: the body ends with the connection
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n" + _OK, False),
    ]
    server = _Scripted(answers)
    transport = HTTPTransport(server.base_url, {"Authorization": "Bearer k"})
    try:
        status, headers, data = transport.post("/chat/completions", b'{"q": 1}', 5.0)
        assert (status, data, headers["x-seen"], headers["content-length"]) == (200, _OK, "b", "12")
        assert transport.post("/chat/completions", b'{"q": 2}', 5.0)[::2] == (200, _OK)
        status, headers, data = transport.post("/chat/completions", b'{"q": 3}', 5.0)
        assert (status, headers["retry-after"], data) == (429, "1", b"")
        assert transport.post("/chat/completions", b'{"q": 4}', 5.0)[::2] == (200, _OK)
        assert transport.post("/chat/completions", b'{"q": 5}', 5.0)[::2] == (200, _OK)
    finally:
        transport.close()
        server.stop()
    assert server.connections == 3  # requests 1-3 on one, 4 on the next, 5 on a third
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and first.endswith(b'\r\n\r\n{"q": 1}')
    assert b"\r\nHost: 127.0.0.1:" in first and b"\r\nContent-Length: 8\r\n" in first
    assert b"\r\nAuthorization: Bearer k\r\n" in first and b"\r\nContent-Type: application/json\r\n" in first


@pytest.mark.parametrize("answer", [
    b"garbage\r\n\r\n",  # not a status line
    b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n" + _OK,  # the body is cut short
    b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n" + _OK,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"",  # the server hangs up without answering
])
def test_a_broken_answer_is_a_connection_error(answer):
    server = _Scripted([(answer, True)])
    transport = HTTPTransport(server.base_url, {})
    try:
        with pytest.raises(TransportError) as info:
            transport.post("/chat/completions", b"{}", 5.0)
        assert info.value.kind == "connection error"
    finally:
        transport.close()
        server.stop()


def test_a_header_that_would_break_the_request_is_refused_without_showing_its_value():
    with pytest.raises(ValueError, match="'Authorization'") as info:
        HTTPTransport("http://127.0.0.1:9/v1", {"Authorization": "Bearer sk-secret\r\nX-Evil: 1"})
    assert "sk-secret" not in str(info.value)
    with pytest.raises(ValueError, match="'X-Key'") as info:
        HTTPTransport("http://127.0.0.1:9/v1", {"X-Key": "sk-sécret-€"})
    assert "sécret" not in str(info.value)
