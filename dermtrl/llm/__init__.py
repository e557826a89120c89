"""Talking to OpenAI-compatible endpoints: the client, its response cache, adaptive concurrency and usage.

Import from the modules (``from dermtrl.llm.<module> import ...``): this package imports nothing, so
that loading one module never pulls in another's heavy dependencies."""
