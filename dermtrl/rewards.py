"""SOREB's numeric-alignment reward (paper eq. 2), as a TRL reward function.

It follows TRL's reward-function contract, ``f(prompts, completions, **dataset_columns) -> list[float | None]``,
so the same reward drives ``SOREBTrainer`` and TRL's ``GRPOTrainer`` / ``RLOOTrainer``, and users can pass
their own. ``None`` means "could not score" (no dimension parsed, K = 0): such an example gets no RL term and
is left out of the baseline; it is never turned into a reward of 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dermtrl.dimensions import DIMENSIONS
from dermtrl.parsing import ParsedScores, parse_scores, parse_scores_with_llm


def completion_text(completion: Any) -> str:
    """A completion as TRL passes it: plain text, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content", "")
        if isinstance(content, str):
            return content
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(completion)


def score_reward(parsed: Mapping[str, float], expert: Mapping[str, float]) -> float | None:
    """r = -(1/K) sum over parsed dimensions of (s_hat - s*)^2; ``None`` when K = 0 (eq. 2)."""
    dims = [d for d in DIMENSIONS if d in parsed and expert.get(d) is not None]
    if not dims:
        return None
    return -sum((parsed[d] - expert[d]) ** 2 for d in dims) / len(dims)


class ScoreAlignmentReward:
    """Negative MSE between the scores parsed from a generated evaluation and the expert scores.

    Rules parse first; with an ``llm_client`` (any object with ``complete(messages)``, e.g.
    :class:`dermtrl.llm.client.LLMClient`) the LLM parser of Figure 4 fills what the rules miss. A step's
    completions are parsed concurrently, up to ``max_concurrency`` at a time (default: the client's own
    ``config.max_concurrency``, e.g. ``SOREBConfig.llm_parser_max_concurrency``), so a batch of 8 waits about one
    parser call, not eight in a row. The parsed scores of the last call stay in :attr:`last_parsed` so a trainer
    can log parse rates and per-dimension errors.
    """

    __name__ = "score_alignment"  # TRL names reward columns after the function

    def __init__(self, llm_client: Any | None = None, expert_column: str = "expert_scores",
                 max_concurrency: int | None = None):
        if max_concurrency is not None and (not isinstance(max_concurrency, int) or max_concurrency < 1):
            raise ValueError(f"max_concurrency must be None or an integer >= 1, got {max_concurrency!r}")
        self.llm_client = llm_client
        self.expert_column = expert_column
        self.max_concurrency = max_concurrency
        self.last_parsed: list[ParsedScores] = []

    def parse(self, text: str) -> ParsedScores:
        if self.llm_client is None:
            return parse_scores(text)
        return parse_scores_with_llm(text, self.llm_client)

    def parse_many(self, texts: Sequence[str]) -> list[ParsedScores]:
        """:meth:`parse` of every text, in order; the LLM parser's calls run concurrently (rules-only: in turn)."""
        limit = self.max_concurrency or getattr(getattr(self.llm_client, "config", None), "max_concurrency", 8)
        workers = min(int(limit), len(texts))
        if self.llm_client is None or workers <= 1:
            return [self.parse(t) for t in texts]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dermtrl-reward-parser") as pool:
            return list(pool.map(self.parse, texts))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        if self.expert_column not in columns:
            raise KeyError(f"the reward needs the dataset column {self.expert_column!r} (the expert scores)")
        experts = columns[self.expert_column]
        self.last_parsed = self.parse_many([completion_text(c) for c in completions])
        return [score_reward(p.scores, e) for p, e in zip(self.last_parsed, experts, strict=True)]
