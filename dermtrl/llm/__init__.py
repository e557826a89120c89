"""Talking to OpenAI-compatible endpoints: the client and its settings, its HTTP transport, response cache,
adaptive concurrency, what it learns about an endpoint, usage counts, and the loopback stand-in server.

Import from the modules (``from dermtrl.llm.<module> import ...``): this package imports nothing, so
that loading one module never pulls in another's heavy dependencies."""
