"""DermEval failures inside `bench run` are counted in the summary and exit 1 unless --allow-failures.

DermEval's model is replaced by a scripted evaluator that writes evaluation texts (the real parser reads them):
the tiny LLaVA is not needed to check how failures are counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import dermtrl.bench.dermeval_scoring as dermeval_scoring
from dermtrl.cli import main as dermtrl_main
from dermtrl.dermeval.evaluator import Evaluation
from dermtrl.parsing import parse_scores
from dermtrl.testing import FakeOpenAIServer
from tests.test_release_standin import make_release

pytestmark = pytest.mark.timeout(180)


class ScriptedDermEval:
    """Answers the Figure 4 format, except for narratives that mention 'garbled' (no scores at all)."""

    model_id = "scripted"
    model_fingerprint = "scripted-v1"
    max_new_tokens = 64
    batch_size = 4

    def evaluate_batch(self, images, narratives):
        out = []
        for text in narratives:
            answer = "I cannot tell." if "garbled" in text else (
                "Accuracy: 4\nSafety: 5\nMedical Groundedness: 4\nClinical Coverage: 3\nReasoning Coherence: 4\n"
                "Description Precision: 4")
            out.append(Evaluation(text=answer, scores=parse_scores(answer).as_scores()))
        return out


def test_dermeval_failures_are_counted_and_exit_1(tmp_path, monkeypatch, capsys):
    root = make_release(tmp_path / "DermBench", 6, image_root=tmp_path / "dermnet", planted=False)
    rows = [json.loads(line) for line in (root / "data/manifest/dermbench_test.jsonl").read_text().splitlines()]
    cands = tmp_path / "cands.jsonl"
    cands.write_text("".join(json.dumps({"case_id": r["id"], "text": ("garbled " if i < 2 else "") + "A narrative."})
                             + "\n" for i, r in enumerate(rows)), encoding="utf-8")
    monkeypatch.setattr(dermeval_scoring, "load_dermeval", lambda *a, **k: ScriptedDermEval())
    with FakeOpenAIServer() as server:
        config = {"out": str(tmp_path / "run"),
                  "dataset": {"source": str(root), "image_root": str(tmp_path / "dermnet")},
                  "judge": {"base_url": server.base_url, "model": "judge", "max_retries": 0},
                  "candidates": [{"name": "mine", "file": str(cands)}], "report": {"n_bootstrap": 0},
                  "evaluators": {"dermeval": {"adapter": "scripted"}}}
        path = tmp_path / "bench.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        status = dermtrl_main(["bench", "run", "--config", str(path), "--no-progress"])
        captured = capsys.readouterr()
        text = " ".join((captured.out + captured.err).split())
        assert status == 1, text
        assert "0 candidate(s), 0 judgment(s) and 2 DermEval score(s) failed" in text
        assert "2 of 18 records (candidates, judgments and DermEval scores) failed: exit status 1" in text
        assert dermtrl_main(["bench", "run", "--config", str(path), "--no-progress", "--allow-failures"]) == 0
    records = [json.loads(line) for line in Path(tmp_path / "run" / "dermeval.jsonl").read_text().splitlines()]
    assert sum(r["status"] == "failed" for r in records) == 2
