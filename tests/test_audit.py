"""``dermtrl bench audit``: flag references whose conclusion contradicts the label, short or empty texts,
duplicates, sha mismatches and file-name labels, on a stand-in checkout; the optional LLM pass through the
loopback server."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from dermtrl.bench.audit import audit_rows, concluding_sentence, confirm_with_llm, label_terms
from dermtrl.bench.release import load_release
from dermtrl.llm.client import ClientConfig, LLMClient
from dermtrl.testing import FakeOpenAIServer, last_user_text
from tests.test_release_standin import PLANTED_ID, make_release, reference_text

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]
DERMTRL = [sys.executable, "-c", "import sys; from dermtrl.cli import main; sys.exit(main())"]


def row(case_id: str, label: str, text: str | None, **kw) -> dict:
    return {"case_id": case_id, "diagnosis": label, "reference": text, **kw}


def test_the_planted_mismatch_is_flagged_with_its_concluding_sentence(tmp_path):
    release = load_release(make_release(tmp_path / "DermBench", 40))
    flags = audit_rows(release.rows(), sha_mismatch=release.sha_mismatch)
    assert [f.case_id for f in flags] == [PLANTED_ID]
    (flag,) = flags
    assert flag.reasons == ["mismatch"] and flag.label == "Rhinophyma"
    assert flag.conclusion == "The answer is hand eczema."
    assert flag.image == "Acne and Rosacea Photos/07Rhinophyma1.jpg"


def test_conclusion_is_read_outside_thinking_and_skips_advice():
    text = ("<think> The answer is psoriasis, maybe. </think>\nThe lesion is scaly. The most likely diagnosis is "
            "tinea corporis. I recommend consulting a dermatologist for confirmation.")
    assert concluding_sentence(text) == "The most likely diagnosis is tinea corporis."
    assert concluding_sentence("<think> only thinking here, the answer is scabies. </think>") == (
        "only thinking here, the answer is scabies.")


def test_synonyms_and_label_words():
    assert label_terms("PerioralDermEye") == ["perioral", "derm"]
    assert label_terms("eczema fingertips") == ["eczema"]
    ok = audit_rows([row("a", "ctcl", reference_text("mycosis fungoides", 1)),
                     row("b", "warts common", reference_text("common verruca vulgaris", 2)),
                     row("c", "seborrheic keratoses", reference_text("seborrheic keratosis", 3))])
    assert ok == []
    bad = audit_rows([row("d", "lichen planus", reference_text("psoriasis", 4))])
    assert [f.reasons for f in bad] == [["mismatch"]]


def test_empty_short_duplicate_sha_and_artefact_labels():
    long_a, long_b = reference_text("vitiligo", 1), reference_text("rosacea", 2)
    rows = [row("e", "vitiligo", ""), row("m", "vitiligo", None), row("s", "vitiligo", "The answer is vitiligo."),
            row("d1", "rosacea", long_b), row("d2", "rosacea", long_b.upper()), row("h", "vitiligo", long_a),
            row("f", "Forest 2", reference_text("forest 2", 5)), row("c", "hyperLinearCrease",
                                                                     reference_text("hyper linear crease", 6))]
    flags = {f.case_id: f for f in audit_rows(rows, sha_mismatch={"h"})}
    assert flags["e"].reasons == ["empty"] and flags["m"].detail.startswith("no reference text")
    assert flags["s"].reasons == ["short"]
    assert flags["d1"].reasons == ["duplicate"] and "d2" in flags["d1"].detail
    assert flags["h"].reasons == ["sha_mismatch"]
    assert flags["f"].reasons == ["label_artefact"] and "digits" in flags["f"].detail
    assert flags["c"].reasons == ["label_artefact"] and "camelCase" in flags["c"].detail


def test_bench_audit_cli_writes_the_table_and_exits_0(tmp_path):
    root = make_release(tmp_path / "DermBench", 40)
    done = subprocess.run([*DERMTRL, "bench", "audit", str(root), "--out", str(tmp_path / "audit")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audited 40 references: 1 flagged (mismatch 1)" in " ".join(done.stdout.split())
    with (tmp_path / "audit" / "audit.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["case_id"], r["reasons"]) for r in rows] == [(PLANTED_ID, "mismatch")]
    assert "hand eczema" in rows[0]["conclusion"]
    assert "hand eczema" in (tmp_path / "audit" / "audit.md").read_text()


def test_llm_pass_clears_what_it_confirms_and_is_cached(tmp_path):
    rows = [row("x", "lichen planus", reference_text("psoriasis", 1)),
            row("y", "keratolysis exfoliativa", reference_text("lamellar dyshidrosis", 2))]
    flags = audit_rows(rows)
    assert [f.case_id for f in flags] == ["x", "y"]

    def respond(body: dict) -> str:
        return "yes" if "lamellar dyshidrosis" in last_user_text(body) else "No."

    with FakeOpenAIServer(respond) as server:
        config = ClientConfig(base_url=server.base_url, model="m", cache_path=str(tmp_path / "c.sqlite"))
        with LLMClient(config) as client:
            kept, cleared, failed = confirm_with_llm(flags, client)
        with LLMClient(config) as client:
            again = confirm_with_llm(flags, client)
        assert server.calls == 2  # the second pass came from the cache
    assert [f.case_id for f in kept] == ["x"] and (cleared, failed) == (1, 0)
    assert "the LLM agrees" in kept[0].detail and again[0] == kept
