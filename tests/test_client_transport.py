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
