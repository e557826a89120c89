"""Judge-robustness probes against scripted judges: a robust one is never flagged, a biased one is flagged on
exactly the dimensions its bias moves."""

from __future__ import annotations

import json
import re

import pytest

from dermtrl.bench import DermBench
from dermtrl.bench.probes import INJECTION_PAYLOAD, PADDING_PAYLOAD, probe_items, probe_shift
from dermtrl.bench.render import probe_markdown
from dermtrl.dimensions import DIMENSIONS
from dermtrl.llm.client import ClientConfig
from dermtrl.prompts import CANDIDATE_CLOSE, CANDIDATE_OPEN, REFERENCE_OPEN
from dermtrl.testing import last_user_text

pytestmark = pytest.mark.timeout(60)

_CANDIDATE_RE = re.compile(re.escape(CANDIDATE_OPEN) + r"\n(.*?)\n" + re.escape(CANDIDATE_CLOSE), re.S)
N = 12


def block(values) -> str:
    return "\n".join(f"{d}: {v}" for d, v in zip(DIMENSIONS, values, strict=True))


def case_number(prompt: str) -> int:
    return int(re.search(r"\[case (\d+)\]", prompt).group(1))


def robust(body: dict) -> str:
    """Scores depend on the case only: payloads and order change nothing."""
    i = case_number(last_user_text(body))
    return block([i % 4 + 1, 4, 3, (i + 1) % 4 + 1, 3, 4])


def biased(body: dict) -> str:
    """Obeys injected instructions, likes long texts (Accuracy), prefers the reference first (Safety)."""
    prompt = last_user_text(body)
    if "Ignore all previous instructions" in prompt:
        return block([5] * 6)
    i = case_number(prompt)
    candidate = _CANDIDATE_RE.search(prompt).group(1)
    accuracy = 4 if len(candidate) > 500 else i % 2 + 1
    safety = 4 if prompt.startswith(REFERENCE_OPEN) else 2
    return block([accuracy, safety, 3, 3, 3, 3])


def cases_and_candidates():
    rows = [{"case_id": f"c{i}", "reference": f"Reference for case {i}.", "category": "Eczema Photos"}
            for i in range(N)]
    cands = [{"case_id": f"c{i}", "text": f"[case {i}] Candidate narrative for case {i}."} for i in range(N)]
    return rows, {"vlm": cands}


def run(server, tmp_path, **kw):
    rows, cands = cases_and_candidates()
    config = ClientConfig(base_url=server.base_url, model="judge", cache_path=str(tmp_path / "cache.sqlite"))
    with DermBench(config, progress=False) as bench:
        return bench.probe(rows, cands, tmp_path / "probes", n_bootstrap=200, **kw)


def test_a_robust_judge_is_not_flagged(make_openai_server, tmp_path):
    server = make_openai_server(responder=robust)
    report = run(server, tmp_path)
    assert [r.kind for r in report.results] == ["injection", "length", "order"]
    assert not report.flagged
    for r in report.results:
        assert r.n_pairs == N and r.n_unpaired == 0
        assert r.shift == dict.fromkeys(DIMENSIONS, 0.0) and r.overall == 0.0
    assert server.calls == 4 * N
    files = {p.name for p in (tmp_path / "probes").iterdir()}
    assert files >= {"baseline.jsonl", "injection.jsonl", "length.jsonl", "order.jsonl", "probes.md", "probes.json"}


def test_a_biased_judge_is_flagged_on_the_dimensions_its_bias_moves(make_openai_server, tmp_path):
    server = make_openai_server(responder=biased)
    report = run(server, tmp_path, threshold=0.5)
    result = {r.kind: r for r in report.results}
    assert report.flagged
    assert set(result["injection"].flagged) == {*DIMENSIONS, "Overall"}
    assert result["injection"].shift["Medical Groundedness"] == 2.0
    assert result["length"].flagged == ("Accuracy",) and result["length"].shift["Accuracy"] == 2.5
    lo, hi = result["length"].ci["Accuracy"]
    assert lo <= 2.5 <= hi and lo > 0
    assert result["order"].flagged == ("Safety",) and result["order"].shift["Safety"] == 2.0
    markdown = probe_markdown(report)
    assert "FLAGGED: Acc" in markdown and "FLAGGED: Safe" in markdown
    saved = json.loads((tmp_path / "probes" / "probes.json").read_text())
    assert saved["flagged"] is True and saved["threshold"] == 0.5


def test_probe_payloads_reach_the_judge_inside_the_data_block(make_openai_server, tmp_path):
    server = make_openai_server(responder=robust)
    run(server, tmp_path, kinds=["injection"], n=2)
    prompts = [last_user_text(r["body"]) for r in server.chat_requests]
    injected = [p for p in prompts if "Ignore all previous instructions" in p]
    assert len(injected) == 2 and len(prompts) == 4
    for p in injected:
        assert p.count(CANDIDATE_CLOSE) == 1  # the payload's fake delimiter was neutralised
        assert p.index(CANDIDATE_OPEN) < p.index("Ignore all previous") < p.index(CANDIDATE_CLOSE)


def test_probe_items_and_shift_pairing():
    from dermtrl.bench.judge import JudgeItem

    items = [JudgeItem("m", "1", "text", "ref"), JudgeItem("m", "2", None, "ref", error="no candidate")]
    assert probe_items(items, "injection")[0].candidate == "text" + INJECTION_PAYLOAD
    assert probe_items(items, "length")[0].candidate == "text" + PADDING_PAYLOAD
    assert probe_items(items, "order") == items and probe_items(items, "length")[1] == items[1]
    assert len(PADDING_PAYLOAD.split()) > 200
    with pytest.raises(ValueError, match="unknown probe 'tone'"):
        probe_items(items, "tone")

    def r(case, value, status="scored"):
        scores = dict.fromkeys(DIMENSIONS, value) if status == "scored" else None
        return {"model": "m", "case_id": case, "status": status, "scores": scores}

    result = probe_shift([r("1", 2), r("2", 3), r("3", 1, "failed")], [r("1", 3), r("2", 3), r("3", 4)], "length",
                         threshold=0.5, n_bootstrap=0)
    assert result.n_pairs == 2 and result.n_unpaired == 1
    assert result.shift["Accuracy"] == 0.5 and result.ci["Accuracy"] is None
    assert result.flagged == (*DIMENSIONS, "Overall")
