"""What every ``dermtrl`` command module shares: the consoles, the user-error class and the exit-status rule.

Subcommand modules (:mod:`dermtrl.cli.bench`, :mod:`dermtrl.cli.data`, :mod:`dermtrl.hub.adapter`) import
from here, never from :mod:`dermtrl.cli.dispatch`, so that the dispatcher can import them without a cycle.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from dermtrl.console import console, err_console
from dermtrl.errors import CLIError, DermtrlError, user_errors

__all__ = ["EXIT_FAILURES", "EXIT_USER_ERROR", "CLIError", "DermtrlError", "allow_failures_arg", "console",
           "endpoint_args", "endpoint_config", "err_console", "finish", "user_errors"]


#: Exit status of a command whose records include failures (without ``--allow-failures``).
EXIT_FAILURES = 1
#: Exit status of a command stopped by a :class:`~dermtrl.errors.DermtrlError` (bad input the user can fix).
EXIT_USER_ERROR = 2


def finish(failed: int, total: int, what: str, *, allow_failures: bool, notes: Sequence[str] = ()) -> int:
    """The exit status of a job over ``total`` records of which ``failed`` failed, after its notes (retries by
    kind, concurrency lowered): 0, or :data:`EXIT_FAILURES` unless ``allow_failures``. One rule for every command
    a script runs (``dermtrl eval``, ``dermtrl bench generate|judge|run``)."""
    for line in notes:
        err_console.print(line)
    if failed and not allow_failures:
        err_console.print(f"[red]{failed} of {total} {what} failed[/red]: exit status {EXIT_FAILURES} (fix the cause "
                          "and rerun, with --retry-failed where the command has it; --allow-failures accepts them)")
        return EXIT_FAILURES
    return 0


def allow_failures_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-failures", action="store_true",
                   help=f"exit 0 even when some records failed (default: exit {EXIT_FAILURES})")


# --- one set of endpoint flags for every OpenAI-compatible endpoint ------------------------------------------

#: ``ClientConfig`` field -> help text of its flag. The flags are these fields' names with dashes
#: (``max_concurrency`` -> ``--max-concurrency``), their defaults ``ClientConfig``'s: one spelling for the judge,
#: the candidate generator, the data pipeline and the LLM parser, on the command line and in SOREBConfig.
_ENDPOINT_FIELDS: dict[str, str] = {
    "base_url": "e.g. http://127.0.0.1:8000/v1 (default: the OpenAI API)",
    "model": "the {who} model name at that endpoint",
    "api_key_env": "NAME of the environment variable holding the API key (never the key itself)",
    "max_concurrency": "requests in flight at once (lowered automatically while the server answers 429)",
    "max_retries": "retries per request (transient errors: 429, 5xx, timeouts)",
    "timeout": "seconds per request",
    "max_tokens": "answer length cap",
    "cache_path": "SQLite response cache (resumes at no cost, reruns free)",
}
_ALIASES = {"max_concurrency": ("concurrency",), "cache_path": ("cache",)}  # earlier spellings, still accepted


def endpoint_args(p: argparse.ArgumentParser, who: str, *, prefix: str = "", model_required: bool = True,
                  structured_output: bool = False, defaults: dict[str, Any] | None = None) -> None:
    """Add the endpoint flags (``--base-url``, ``--model``, ...), generated from ``ClientConfig``'s fields.

    ``prefix`` names a second endpoint beside a command's own (``llm-parser-`` gives ``--llm-parser-model``);
    ``defaults`` overrides ``ClientConfig``'s default of a field for this command. ``--model`` defaults to unset,
    so that a command can tell "no endpoint" (``--llm-parser-model`` absent) from a choice.
    """
    import dataclasses

    from dermtrl.llm.client import ClientConfig

    fields = {f.name: f for f in dataclasses.fields(ClientConfig)}
    g = p.add_argument_group(f"{who} endpoint (OpenAI-compatible: OpenAI, Gemini, a vLLM or llama.cpp server, ...)")
    for name, help_text in _ENDPOINT_FIELDS.items():
        default = (defaults or {}).get(name, None if name == "model" else fields[name].default)
        flags = [f"--{prefix}{n.replace('_', '-')}" for n in (name, *_ALIASES.get(name, ()))]
        kind = {"max_concurrency": int, "max_retries": int, "max_tokens": int, "timeout": float}.get(name, str)
        required = name == "model" and model_required
        shown = "" if required or default is None else f" (default: {default})"
        g.add_argument(*flags, dest=f"{prefix}{name}".replace("-", "_"), type=kind, required=required,
                       default=None if required else default, help=help_text.format(who=who) + shown)
    if structured_output:
        g.add_argument(f"--{prefix}structured-output", action="store_true",
                       help="ask for the six scores as JSON (response_format json_schema: vLLM, llama.cpp, OpenAI); "
                            "helps small judges that cannot keep to the free-text format")


def endpoint_config(args: argparse.Namespace, prefix: str = "", **extra: Any) -> Any:
    """The ``ClientConfig`` that :func:`endpoint_args`' flags describe (``extra`` sets other fields)."""
    from dermtrl.llm.client import ClientConfig

    key = prefix.replace("-", "_")
    values = {name: getattr(args, key + name) for name in _ENDPOINT_FIELDS}
    values = {name: value for name, value in values.items() if value is not None}  # unset: ClientConfig's default
    if getattr(args, key + "structured_output", False):
        values["response_format"] = "scores"
    return ClientConfig(**values, **extra)
