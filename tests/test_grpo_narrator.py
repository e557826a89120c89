"""recipes/grpo_narrator.py: the closed loop (writer SFT, GRPO, before/after with DermEval and the oracle), tiny."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from dermtrl.dimensions import DIMENSIONS
from dermtrl.llm.client import ClientConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def load_recipe():
    import sys

    name = "grpo_narrator_recipe"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / "grpo_narrator.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run(recipe, tmp_path, *extra):
    argv = ["--config", str(ROOT / "recipes/configs/demo_grpo_narrator.yaml"), "--output_dir", str(tmp_path),
            "--writer_sft_steps", "30", "--test_cases", "4", "--train_cases", "8", "--max_steps", "2",
            "--max_completion_length", "24", "--eval_max_new_tokens", "48", *extra]
    return recipe.main(*recipe.make_parser().parse_args_and_config(args=argv))


def test_the_oracle_arm_trains_and_reports_before_and_after(tmp_path):
    recipe = load_recipe()
    result = run(recipe, tmp_path, "--reward", "oracle", "--evaluator_adapter", "", "--evaluator_model",
                 "dermtrl:tiny", "--evaluator_max_new_tokens", "8")
    saved = json.loads((tmp_path / "narrator_eval.json").read_text())
    assert saved["steps"] == result["steps"] == 2 and saved["reward"] == "oracle"
    for phase in ("before", "after"):
        rows = saved["cases"][phase]
        assert len(rows) == 4 and all(r["narrative"] for r in rows)
        readable = [r["oracle"]["readable"] for r in rows]
        assert saved[phase]["oracle_readable"] == sum(readable) / 4
        for r in rows:  # an unreadable narrative has a reason and no score, never a 0
            unreadable = not r["oracle"]["readable"]
            assert (r["oracle"]["macro"] is None) == unreadable == (r["oracle"]["reason"] is not None)


def test_the_dermeval_arm_trains_against_a_served_dermeval(tmp_path, make_openai_server):
    from dermtrl.dermeval.evaluator import DermEval
    from dermtrl.dermeval.serve import DermEvalServer
    from dermtrl.tiny import tiny_llava_path

    scores = (4, 5, 4, 3, 4, 4)
    parser = make_openai_server(responder=lambda body: "\n".join(f"{d}: {s}" for d, s in zip(DIMENSIONS, scores,
                                                                                           strict=True)))
    evaluator = DermEval.from_pretrained(tiny_llava_path(), max_new_tokens=8, llm_parser=ClientConfig(
        base_url=parser.base_url, model="parser", max_retries=0))
    with DermEvalServer(evaluator) as server:
        result = run(load_recipe(), tmp_path, "--reward", "dermeval", "--evaluator_url", server.base_url)
        batches = list(server.batcher.batches)
    assert result["steps"] == 2
    assert batches and max(batches) > 1  # each step's completions went to the server together
    for phase in ("before", "after"):
        macro = result[phase]["dermeval_macro"]
        assert macro is None or math.isclose(macro, 4.0)
    assert any(result[p]["dermeval_macro"] is not None for p in ("before", "after"))


def test_bad_settings_are_refused_before_anything_loads(tmp_path):
    recipe = load_recipe()
    with pytest.raises(SystemExit, match="--reward must be one of"):
        run(recipe, tmp_path, "--reward", "vibes")
    with pytest.raises(SystemExit, match="--judge_base_url"):
        run(recipe, tmp_path, "--reward", "judge")
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        recipe.parse_weights("Accuracy")


def _row(case_id, narrative, dermeval, oracle_macro):
    return {"case_id": case_id, "narrative": narrative, "dermeval_macro": dermeval,
            "dermeval_scores": {d: dermeval for d in DIMENSIONS} if dermeval is not None else {},
            "oracle": {"readable": oracle_macro is not None, "macro": oracle_macro,
                       "scores": {d: oracle_macro for d in DIMENSIONS} if oracle_macro is not None else None,
                       "reason": None if oracle_macro is not None else "no complete description"}}


def test_closed_loop_gaps_pair_the_same_cases_and_skip_unreadable_ones(load_benchmark, capsys):
    bench = load_benchmark("closed_loop")
    before = [_row("c1", "a", 2.0, 2.0), _row("c2", "b", 3.0, 3.0), _row("c3", "c", 1.0, None)]
    after = [_row("c1", "a2", 4.0, 2.5), _row("c2", "b2", 3.5, 3.5), _row("c3", "gamed", 5.0, None)]
    results = {"dermeval": [{"seed": s, "steps": 2, "cases": {"before": before, "after": after}} for s in (0, 1)]}
    rb, ra = bench.matrix(results["dermeval"], "before", bench.dermeval_macro), bench.matrix(
        results["dermeval"], "after", bench.dermeval_macro)
    ob, oa = bench.matrix(results["dermeval"], "before", bench.oracle_macro), bench.matrix(
        results["dermeval"], "after", bench.oracle_macro)
    assert rb.shape == (2, 3, 1) and math.isnan(ob[0, 2, 0])
    # c1: reward +2, oracle +0.5 -> 1.5; c2: +0.5 and +0.5 -> 0; c3 unreadable: left out (never a 0)
    assert bench._gap(rb, ra, ob, oa) == pytest.approx(0.75)
    assert bench._gain(ob, oa) == pytest.approx(0.5)
    bench.report(results)
    out = capsys.readouterr().out
    assert "gaming gap under the DermEval reward (reward gain - oracle gain): +0.75" in out
    assert "DermEval 4.00, oracle 2.50" in out and "gamed" in out  # the over-scored and the unreadable example
