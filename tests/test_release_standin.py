"""A stand-in checkout of the DermBench release in its exact layout, and the loader's checks against it.

The release's texts are CC BY-NC and are never copied here: :func:`make_release` writes texts of its own (with
``<think>`` blocks, as the release's are), its own two prompt files (with the placeholders and the literal JSON
example the real judge prompt has), the manifest with real sha256 values and ``categories.csv``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dermtrl.bench.release import ReleaseError, find_release, image_root_or_env, load_release
from dermtrl.categories import CATEGORIES

#: One made-up label per category (a condition of that group), used for the stand-in references.
LABELS = (
    "plaque psoriasis", "seborrheic keratosis", "tinea corporis", "rosacea", "nummular eczema",
    "basal cell carcinoma", "molluscum contagiosum", "onychomycosis", "necrobiosis lipoidica", "vitiligo",
    "atopic dermatitis", "cherry angioma", "atypical nevi", "bullous pemphigoid", "scabies", "discoid lupus",
    "leukocytoclastic vasculitis", "genital warts", "morbilliform drug eruption", "impetigo",
    "allergic contact dermatitis", "alopecia areata", "acute urticaria",
)
STANDIN_CANDIDATE_PROMPT = (
    "Stand-in candidate prompt written for dermtrl's tests. Describe the lesion in the image, give two "
    "differential diagnoses and end with \"The answer is <disease>\".\n"
)
#: Written for the tests in the release's shape: two placeholders, bracketed section headers, literal JSON braces.
STANDIN_JUDGE_PROMPT = """Stand-in reference-based judge prompt written for dermtrl's tests.

[CANDIDATE_SECTION]
{candidate_text}

[REFERENCE_SECTION]
{reference_text}

Score the candidate against the reference on six dimensions from 0 to 5. Answer with this JSON object:
{
  "scores": {"Accuracy": 0.0, "Safety": 0.0, "Medical Groundedness": 0.0, "Clinical Coverage": 0.0,
             "Reasoning Coherence": 0.0, "Description Precision": 0.0},
  "justification": "one sentence"
}
"""
#: The planted error: this case's label is rosacea's rhinophyma, its text concludes hand eczema.
PLANTED_ID = "dermbench_0004"


def reference_text(label: str, i: int) -> str:
    return (
        f"Looking at the picture of case {i}, I will reason step by step about the visible skin findings.\n\n"
        f"<think> The lesion shows well-defined borders, some erythema and a fine surface change; the location "
        f"and the distribution matter for the differential of case {i}. </think>\n\n"
        "The morphology is described first: colour, border, surface and distribution, then the differential "
        "diagnosis is narrowed by the features that separate the candidates from each other.\n\n"
        f"<think> Other possibilities were weighed and set aside because the features do not fit them as well "
        f"as {label} does. </think>\n\n"
        f"**Conclusion**: The findings are most consistent with **{label}**. The answer is {label}.\n"
    )


def make_release(root: Path, n: int = 40, *, image_root: Path | None = None, planted: bool = True) -> Path:
    """A stand-in checkout of ``n`` cases over the 23 categories at ``root``; images under ``image_root`` if given.

    Case :data:`PLANTED_ID` (the fourth) is labelled ``Rhinophyma`` in "Acne and Rosacea Photos" while its text
    concludes hand eczema, as the real release's reference for that image does.
    """
    rows, counts = [], {}
    for i in range(n):
        k = i % len(CATEGORIES)
        category, label = CATEGORIES[k], LABELS[k]
        stem = f"{label.replace(' ', '-')}-{i}.jpg"
        text = reference_text(label, i)
        if planted and i == 3:
            category, label, stem = "Acne and Rosacea Photos", "Rhinophyma", "07Rhinophyma1.jpg"
            text = reference_text("hand eczema", i)
        rel = f"data/cot/{category}/{stem}.txt"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        rows.append({"id": f"dermbench_{i + 1:04d}", "source": "stand-in", "split": "test", "category": category,
                     "diagnosis": label, "dermnet_image_path": f"{category}/{stem}", "cot": rel,
                     "cot_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()})
        counts[category] = counts.get(category, 0) + 1
        if image_root is not None:
            write_image(image_root / category / stem, i)
    manifest = root / "data" / "manifest"
    manifest.mkdir(parents=True, exist_ok=True)
    (manifest / "dermbench_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    lines = ["category,count,percentage"] + [f"{c},{v},{100 * v / n:.2f}" for c, v in counts.items()]
    (manifest / "categories.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prompts = root / "dermbench" / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    (prompts / "candidate_generation.txt").write_text(STANDIN_CANDIDATE_PROMPT, encoding="utf-8")
    (prompts / "dermbench_judge.txt").write_text(STANDIN_JUDGE_PROMPT, encoding="utf-8")
    return root


def write_image(path: Path, i: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), ((37 * i) % 256, (91 * i) % 256, 120)).save(path, format="JPEG")


# --- loading and the checks ---------------------------------------------------------------------------------


def test_loads_the_checkout_and_keeps_id_category_diagnosis(tmp_path):
    root = make_release(tmp_path / "DermBench")
    release = load_release(root)
    assert len(release.cases) == 40 and not release.problems
    assert len({c.category for c in release.cases}) == 23 and set(release.categories) <= set(CATEGORIES)
    rows = release.rows()
    assert rows[0]["case_id"] == "dermbench_0001" and rows[0]["diagnosis"] == LABELS[0]
    assert rows[0]["category"] == CATEGORIES[0] and rows[0]["image"] is None
    assert "<think>" in rows[0]["reference"]
    assert "40 cases in 23 categories; sha256 matches 40 of 40" in release.summary()
    # the data/ folder is accepted as well as the root
    assert find_release(root / "data") == root.resolve()
    assert len(load_release(root / "data").cases) == 40


def test_image_paths_are_under_the_image_root(tmp_path, monkeypatch):
    images = tmp_path / "dermnet"
    root = make_release(tmp_path / "DermBench", 5, image_root=images)
    release = load_release(root)
    rows = release.rows(images)
    assert Path(rows[0]["image"]) == (images / rows[0]["dermnet_image_path"]).resolve()
    assert Path(rows[0]["image"]).is_file()
    monkeypatch.setenv("DERMNET_TEST_ROOT", str(images))
    assert image_root_or_env(None) == str(images)
    with pytest.raises(ReleaseError, match="image_root: .* is not a folder"):
        image_root_or_env(tmp_path / "nowhere")


def test_sha_mismatch_missing_and_extra_files_are_reported(tmp_path):
    root = make_release(tmp_path / "DermBench", 10)
    release = load_release(root)
    first, second = release.cases[0], release.cases[1]
    (root / first.cot).write_text("edited after release\n", encoding="utf-8")
    (root / second.cot).unlink()
    (root / "data" / "cot" / "stray.txt").write_text("not in the manifest", encoding="utf-8")
    release = load_release(root)
    assert release.sha_mismatch == [first.id]
    assert release.missing == [second.cot]
    assert release.extra == ["data/cot/stray.txt"]
    problems = "\n".join(release.problems)
    assert "1 reference(s) do not match their cot_sha256" in problems and first.id in problems
    assert "1 reference file(s) named in the manifest are missing" in problems
    assert "data/cot/stray.txt" in problems
    assert release.cases[1].reference is None  # its case becomes a failed record downstream, the rest run


def test_a_truncated_manifest_line_names_the_line(tmp_path):
    root = make_release(tmp_path / "DermBench", 6)
    manifest = root / "data" / "manifest" / "dermbench_test.jsonl"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4][: len(lines[4]) // 2]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ReleaseError, match=r"dermbench_test.jsonl, line 5: not a JSON object .*truncated"):
        load_release(root)


def test_a_manifest_row_without_a_field_names_line_and_field(tmp_path):
    root = make_release(tmp_path / "DermBench", 3)
    manifest = root / "data" / "manifest" / "dermbench_test.jsonl"
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    del rows[1]["diagnosis"]
    rows[2]["cot"] = "../../outside.txt"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ReleaseError, match=r"line 2, field 'diagnosis': missing"):
        load_release(root)
    rows[1]["diagnosis"] = "x"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ReleaseError, match=r"line 3, field 'cot': .* inside the checkout"):
        load_release(root)


def test_not_a_checkout_and_a_data_only_checkout(tmp_path):
    with pytest.raises(ReleaseError, match="not a DermBench release checkout"):
        load_release(tmp_path)
    root = make_release(tmp_path / "DermBench", 3)
    release = load_release(root)
    assert release.prompt("candidate") == STANDIN_CANDIDATE_PROMPT.strip()
    (root / "dermbench" / "prompts" / "dermbench_judge.txt").unlink()
    with pytest.raises(ReleaseError, match="official judge prompt is not in this checkout"):
        release.prompt("judge")


STANDIN_DERMEVAL_PROMPTS = '''"""Stand-in for the release's DermEval prompt module, written for dermtrl's tests."""

from .constants import NAMES


def build_dermeval_prompt(diagnostic_text):
    return "Stand-in DermEval prompt over " + ", ".join(NAMES) + ":\\n" + str(diagnostic_text).strip()
'''


def write_dermeval_prompt_module(root: Path) -> Path:
    """The release's ``dermbench/dermeval`` package in a stand-in checkout (its prompt written for these tests)."""
    package = root / "dermbench" / "dermeval"
    package.mkdir(parents=True)
    (root / "dermbench" / "__init__.py").write_text("", encoding="utf-8")
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "constants.py").write_text('NAMES = ["Accuracy", "Safety"]\n', encoding="utf-8")
    (package / "prompts.py").write_text(STANDIN_DERMEVAL_PROMPTS, encoding="utf-8")
    return root


def test_the_official_dermeval_prompt_is_imported_from_the_checkout(tmp_path):
    root = make_release(tmp_path / "DermBench", 2)
    release = load_release(root)
    with pytest.raises(ReleaseError, match="no dermbench/dermeval/prompts.py"):
        release.dermeval_prompt_builder()
    write_dermeval_prompt_module(root)
    build = release.dermeval_prompt_builder()
    assert build("  Red plaques.  ") == "Stand-in DermEval prompt over Accuracy, Safety:\nRed plaques."
    import sys

    assert "dermbench" not in sys.modules or not str(getattr(sys.modules["dermbench"], "__file__", "")).startswith(
        str(root))
