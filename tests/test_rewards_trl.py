"""DermEvalReward and DermBenchJudgeReward: TRL's reward contract, the Safety gate, weights, the served mode, and a
real GRPOTrainer run on the tiny model with both rewards."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys

import pytest

from dermtrl.cases.synthetic import generate_case
from dermtrl.dimensions import DIMENSIONS
from dermtrl.llm.client import ClientConfig
from dermtrl.rewards import AsyncDermEvalReward, DermBenchJudgeReward, DermEvalReward, gated_reward

pytestmark = pytest.mark.timeout(600)

UNSAFE_TEXT = "\n".join(f"{d}: {s}" for d, s in zip(DIMENSIONS, (5, 1, 5, 5, 5, 5), strict=True))


def score_text(values) -> str:
    return "\n".join(f"{d}: {s}" for d, s in zip(DIMENSIONS, values, strict=True))


def test_the_reward_is_the_weighted_mean_gated_by_safety():
    scores = dict(zip(DIMENSIONS, (4, 5, 4, 3, 4, 4), strict=True))
    assert gated_reward(scores) == pytest.approx(4.0)
    assert gated_reward(scores, {"Accuracy": 3, "Desc": 1}) == pytest.approx(4.0)
    assert gated_reward(scores, {"Clinical Coverage": 1}) == pytest.approx(3.0)
    assert gated_reward({**scores, "Safety": 2.0}, floor=-1.0) == -1.0  # at the flag: the floor
    assert gated_reward({**scores, "Safety": 2.5}) == pytest.approx((4 + 2.5 + 4 + 3 + 4 + 4) / 6)
    assert gated_reward({**scores, "Safety": 1.0}, safety_gate=float("-inf")) == pytest.approx(20 / 6)
    assert gated_reward({"Accuracy": 5.0, "Safety": None}) == 5.0  # a missing Safety never trips the gate
    assert gated_reward({}) is None
    assert gated_reward({"Accuracy": 5.0}, {"Safety": 1}) is None  # nothing weighted parsed
    with pytest.raises(KeyError, match="Sharpness"):
        gated_reward(scores, {"Sharpness": 1})
    with pytest.raises(ValueError, match="weights"):
        gated_reward(scores, {"Accuracy": -1})
    with pytest.raises(ValueError, match="above 0"):
        gated_reward(scores, {"Accuracy": 0})


@pytest.fixture(scope="module")
def cases():
    return [generate_case(i, seed=5) for i in range(4)]


def make_evaluator(parser_url: str):
    """The tiny base reads no score block by itself; the loopback LLM parser (Figure 4) fills the scores."""
    from dermtrl.dermeval.evaluator import DermEval
    from dermtrl.tiny import tiny_llava_path

    return DermEval.from_pretrained(tiny_llava_path(), max_new_tokens=16,
                                    llm_parser=ClientConfig(base_url=parser_url, model="parser", max_retries=0))


def test_dermeval_reward_in_process_and_served_agree_and_the_gate_holds(make_openai_server, cases):
    from dermtrl.dermeval.serve import DermEvalServer, ServeConfig

    parser = make_openai_server(responder=lambda body: UNSAFE_TEXT)
    evaluator = make_evaluator(parser.base_url)
    columns = {"image": [c["image"] for c in cases]}
    narratives = [c["narrative"] for c in cases]
    local = DermEvalReward(evaluator, floor=-5.0)
    assert local(prompts=[""] * 4, completions=narratives, **columns) == [-5.0] * 4  # Safety 1: the floor
    assert [r["scores"]["Safety"] for r in local.last_records] == [1.0] * 4
    ungated = DermEvalReward(evaluator, safety_gate=float("-inf"), weights={"Accuracy": 1})
    assert ungated(prompts=[""] * 4, completions=narratives, **columns) == [5.0] * 4

    with DermEvalServer(evaluator, ServeConfig(api_key_env="DERMTRL_TEST_SERVE_KEY")) as server:
        import os

        os.environ["DERMTRL_TEST_SERVE_KEY"] = "k-123"
        try:
            served = DermEvalReward(url=server.base_url, api_key_env="DERMTRL_TEST_SERVE_KEY",
                                    safety_gate=float("-inf"), weights={"Accuracy": 1})
            # conversational completions and TRL's VLM `images` column (a list per row), an empty completion
            completions = [[{"role": "assistant", "content": n}] for n in narratives[:3]] + [""]
            got = served(prompts=[""] * 4, completions=completions, images=[[im] for im in columns["image"]])
            assert got == [5.0, 5.0, 5.0, None]
            assert [r["text"] for r in served.last_records[:3]] == [r["text"] for r in ungated.last_records[:3]]
            unauthorised = DermEvalReward(url=server.base_url)
            with pytest.raises(RuntimeError, match="401"):
                unauthorised(prompts=[""], completions=narratives[:1], image=columns["image"][:1])
        finally:
            del os.environ["DERMTRL_TEST_SERVE_KEY"]
    async_reward = AsyncDermEvalReward(evaluator, safety_gate=float("-inf"), weights={"Accuracy": 1})
    assert asyncio.run(async_reward(prompts=[""] * 4, completions=narratives, **columns)) == [5.0] * 4
    with pytest.raises(KeyError, match="'image'"):
        local(prompts=[""], completions=narratives[:1], reference=["x"])
    with pytest.raises(ValueError, match="exactly one"):
        DermEvalReward()


def test_dermeval_reward_is_none_when_nothing_parses(cases):
    from dermtrl.dermeval.evaluator import DermEval
    from dermtrl.tiny import tiny_llava_path

    reward = DermEvalReward(DermEval.from_pretrained(tiny_llava_path(), max_new_tokens=8))
    assert reward(prompts=[""], completions=[cases[0]["narrative"]], image=[cases[0]["image"]]) == [None]


def test_judge_reward_is_async_concurrent_cached_and_reads_the_reference(make_openai_server, cases, tmp_path):
    seen: list[str] = []

    def judge(body):
        text = body["messages"][-1]["content"]
        seen.append(text)
        return UNSAFE_TEXT if "scratch or cut it off" in text else score_text((4, 5, 4, 3, 4, 4))

    server = make_openai_server(responder=judge, latency=0.2)
    config = ClientConfig(base_url=server.base_url, model="judge", max_retries=0, max_concurrency=4,
                          cache_path=str(tmp_path / "judge.sqlite"))
    reward = DermBenchJudgeReward(config, floor=0.0)
    narratives = [c["narrative"] for c in cases]
    references = [c["reference"] for c in cases]
    expected = [0.0 if "scratch or cut it off" in n else 4.0 for n in narratives]
    assert 0.0 in expected and 4.0 in expected  # the cases hold an unsafe narrative and safe ones
    got = asyncio.run(reward(prompts=[""] * 4, completions=narratives, reference=references))
    assert got == expected
    assert server.max_in_flight > 1  # the four judgments ran concurrently
    assert all(ref.split("</think>")[0][:40] in "".join(seen) for ref in references)
    calls = server.calls
    assert reward.score(prompts=[""] * 4, completions=narratives, reference=references) == expected
    assert server.calls == calls  # answered from the cache
    with pytest.raises(KeyError, match="'reference'"):
        reward.score(prompts=[""], completions=narratives[:1])


def test_dermtrl_rewards_imports_without_the_server_or_the_space():
    code = ("import sys, dermtrl.rewards\n"
            "bad = [m for m in ('gradio', 'dermtrl.dermeval.serve', 'torch', 'openai') if m in sys.modules]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_both_rewards_drive_a_real_grpo_run(make_openai_server, tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from dermtrl.cases.synthetic import generate_cases
    from dermtrl.conversation import use_training_template
    from dermtrl.scripts.lora import LANGUAGE_MODEL_LORA_REGEX
    from dermtrl.tiny import tiny_llava_path

    parser = make_openai_server(responder=lambda body: score_text((4, 5, 4, 3, 4, 4)))
    judge = make_openai_server(responder=lambda body: score_text((3, 5, 3, 3, 3, 3)))
    dermeval = AsyncDermEvalReward(make_evaluator(parser.base_url))  # both async: TRL awaits them together
    judge_reward = DermBenchJudgeReward(ClientConfig(base_url=judge.base_url, model="judge", max_retries=0))
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the lesion."}]}]
    data = generate_cases(4, seed=7).select_columns(["image", "reference"]).map(lambda r: {"prompt": prompt})
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_path())
    processor = AutoProcessor.from_pretrained(tiny_llava_path())
    use_training_template(processor)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_steps=2,
                      max_completion_length=12, learning_rate=1e-4, use_cpu=True, bf16=False, report_to="none",
                      save_strategy="no", logging_steps=1, seed=0, dataloader_num_workers=0,
                      generation_kwargs={"suppress_tokens": [model.config.image_token_id]})
    trainer = GRPOTrainer(model=model, reward_funcs=[dermeval, judge_reward], args=args, train_dataset=data,
                          processing_class=processor,
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_LORA_REGEX))
    from trl.trainer.utils import is_async_callable

    assert is_async_callable(dermeval) and is_async_callable(judge_reward)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/dermeval/mean" in h]
    assert len(logs) == 2
    for h in logs:
        # empty completions are None (left out); the ones that were scored get the parser's / judge's scores
        assert math.isnan(h["rewards/dermeval/mean"]) or h["rewards/dermeval/mean"] == pytest.approx(4.0)
        assert math.isnan(h["rewards/dermbench_judge/mean"]) or h["rewards/dermbench_judge/mean"] == pytest.approx(
            (3 + 5 + 3 * 4) / 6)
    assert any(not math.isnan(h["rewards/dermeval/mean"]) for h in logs)
    assert any(not math.isnan(h["rewards/dermbench_judge/mean"]) for h in logs)
    assert len(dermeval.last_records) == 4 and len(judge_reward.last_records) == 4
    assert parser.calls > 0 and judge.calls > 0
    assert any("dermeval/Accuracy" in h for h in trainer.state.log_history)  # per-dimension means via log_metric
