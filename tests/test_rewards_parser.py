"""SOREB's reward with the LLM parser: a step's parser calls run concurrently, in order, and only for what the
rules could not read; against a real loopback server."""

from __future__ import annotations

import re

import pytest

from dermtrl.dimensions import DIMENSIONS
from dermtrl.llm.client import ClientConfig, LLMClient
from dermtrl.llm.concurrency import INITIAL_IN_FLIGHT
from dermtrl.rewards import ScoreAlignmentReward
from dermtrl.testing import last_user_text

pytestmark = pytest.mark.timeout(60)
RULES_READ = "\n".join(f"{d}: 5" for d in DIMENSIONS)


def parser_model(body: dict) -> str:
    """Scores every dimension with the sample number the completion names, so order mistakes show."""
    sample = int(re.search(r"sample (\d)", last_user_text(body)).group(1))
    return "\n".join(f"{d}: {sample % 6}" for d in DIMENSIONS)


def completions(n: int) -> list[str]:
    return [f"The narrative for sample {j} is sound but vague about the border." for j in range(n)]


@pytest.mark.parametrize(("limit", "in_flight"), [(None, INITIAL_IN_FLIGHT), (1, 1)])
def test_a_steps_parser_calls_run_concurrently_and_in_order(make_openai_server, limit, in_flight):
    server = make_openai_server(responder=parser_model, latency=0.3)
    with LLMClient(ClientConfig(base_url=server.base_url, model="parser", max_concurrency=8)) as client:
        reward = ScoreAlignmentReward(client) if limit is None else ScoreAlignmentReward(client, max_concurrency=limit)
        texts = [*completions(8), RULES_READ]
        experts = [dict.fromkeys(DIMENSIONS, 4.0)] * 9
        rewards = reward(["p"] * 9, texts, expert_scores=experts)
    assert server.calls == 8  # the completion the rules read fully was never sent
    # concurrently through the client (a fresh one starts with INITIAL_IN_FLIGHT and ramps up), or one at a time
    assert server.max_in_flight >= in_flight if limit is None else server.max_in_flight == 1
    assert [p.scores for p in reward.last_parsed] == [dict.fromkeys(DIMENSIONS, float(j % 6)) for j in range(8)] + [
        dict.fromkeys(DIMENSIONS, 5.0)]
    assert rewards == [-((j % 6) - 4.0) ** 2 for j in range(8)] + [-1.0]


def test_without_a_parser_the_rules_alone_score_and_a_bad_limit_is_refused():
    reward = ScoreAlignmentReward()
    assert reward(["p"], [RULES_READ], expert_scores=[dict.fromkeys(DIMENSIONS, 5.0)]) == [-0.0]
    with pytest.raises(ValueError, match="max_concurrency"):
        ScoreAlignmentReward(max_concurrency=0)


def test_parse_rate_and_per_dimension_errors_go_through_trls_log_metric_hook():
    """As TRL passes ``log_metric`` to reward functions, the reward logs its parse rate and per-dimension errors
    there (SOREB passes the same hook), instead of a trainer reading the reward's internals."""
    from dermtrl.dimensions import DIMENSIONS
    from dermtrl.rewards import ScoreAlignmentReward

    logged: dict[str, float] = {}
    expert = dict.fromkeys(DIMENSIONS, 4.0)
    full = "\n".join(f"{d}: 3" for d in DIMENSIONS)
    half = "Accuracy: 5\nSafety: 4\nClinical Coverage: 2"
    rewards = ScoreAlignmentReward()(["p", "p"], [full, half], expert_scores=[expert, expert],
                                     log_metric=lambda name, value: logged.__setitem__(name, value))
    assert rewards[0] == -1.0
    assert logged["parse_rate"] == 9 / 12
    assert logged["mae/Acc"] == 1.0 and logged["mae/Safe"] == 0.5 and logged["mae/Cover"] == 1.5
