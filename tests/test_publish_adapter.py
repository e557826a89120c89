"""``dermtrl publish adapter``: the staged repo and its model card, and a push / load-by-id round trip through the
local Hub server that must give the same evaluations as the folder did before the push.

The adapter is the Space's demo adapter (a short Stage-1 run of recipes/sft.py on the tiny model, trained once
and cached under DERMTRL_CACHE), so these tests and the Space tests share one training run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dermtrl.cases.synthetic import generate_case, generate_cases
from dermtrl.cli import main as dermtrl_main
from dermtrl.dermeval.eval_job import agreement_from_records, run_evaluation
from dermtrl.dermeval.evaluator import DermEval
from dermtrl.dimensions import DIMENSIONS
from dermtrl.hub.adapter import PublishError, register_publish_adapter, stage_adapter
from dermtrl.report import write_report
from dermtrl.tiny import TINY_MODEL_NAME
from tests.hub_fixtures import local_hub, run_against_hub  # noqa: F401  (fixtures, found by name)

ROOT = Path(__file__).resolve().parents[1]
SFT_CONFIG = ROOT / "recipes" / "configs" / "demo_sft.yaml"
SOREB_CONFIG = ROOT / "recipes" / "configs" / "demo_soreb.yaml"
REPO_ID = "dermtrl-test/dermeval-lora"
ROUND_TRIP_CASES = (100_010, 100_011, 100_012)
pytestmark = pytest.mark.timeout(300)


def _space_module() -> Any:
    name = "dermeval_space_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "space" / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def adapter() -> Path:
    """The Space's demo adapter: trained on first use (about 6 minutes; in the whole suite test_bench_dermeval
    trains it first, under a longer timeout), then read from the cache."""
    space = _space_module()
    path, _ = space.demo_adapter_path(space.Settings.from_env({}))
    assert path is not None and (path / "adapter_model.safetensors").exists()
    return path


@pytest.fixture(scope="module")
def report_dir(adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Table-1 report of this adapter on held-out synthetic cases, as `dermtrl eval` writes it."""
    out = tmp_path_factory.mktemp("report")
    evaluator = DermEval.from_pretrained(adapter=str(adapter), batch_size=8)
    records = run_evaluation(evaluator, generate_cases(8, start=100_000), out / "evaluations.jsonl", progress=False)
    report = agreement_from_records(records, label="DermEval (demo adapter)", n_bootstrap=100)
    write_report([report], out)
    return out


def _squeeze(text: str) -> str:
    return "".join(text.split())


def _front_matter(readme: str) -> dict[str, Any]:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def test_staged_repo_has_the_adapter_and_a_complete_card(adapter: Path, report_dir: Path, tmp_path: Path) -> None:
    out = stage_adapter(adapter, tmp_path / "repo", repo_id=REPO_ID, sft_config=SFT_CONFIG, soreb_config=SOREB_CONFIG,
                        report=report_dir, datasets=["dermtrl/dermeval"])
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
            "configs/stage1_sft.yaml", "configs/stage2_soreb.yaml", "report/agreement.json"} <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]  # no pickles
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY_MODEL_NAME  # not this machine's cache path
    assert (out / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()

    readme = (out / "README.md").read_text()
    meta = _front_matter(readme)
    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes/configs/demo_sft.yaml").read_text())
    assert meta["library_name"] == "peft" and meta["datasets"] == ["dermtrl/dermeval"]
    assert "base_model" not in meta  # dermtrl:tiny is no Hub id; the card says what it is instead
    assert {"dermeval", "soreb", "lora"} <= set(meta["tags"])
    for needle in (f'DermEval.from_pretrained(adapter="{REPO_ID}")', "**Not a medical device.**",
                   "`dermtrl:tiny`", "`dermtrl:synthetic`", "### Stage 1 (SFT) configuration",
                   "learning_rate: 3.0e-3", "### Stage 2 (SOREB) configuration", "rl_weight: 0.5",
                   "| Evaluator | Acc | Safe | MedG | Cover | Reason | Desc | Macro |", "DermEval (demo adapter)",
                   "## Intended use", "## Out of scope", "## Limitations", "@misc{dermeval_soreb",
                   "@software{vonwerra2020trl", f"rank {recipe['lora_r']}, alpha {recipe['lora_alpha']}"):
        assert needle in readme, needle


def test_local_base_folders_need_a_hub_id(adapter: Path, tmp_path: Path) -> None:
    local = tmp_path / "adapter"
    shutil.copytree(adapter, local)
    config = json.loads((local / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "my-llava")
    (local / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(PublishError, match="--base-model"):
        stage_adapter(local, tmp_path / "a", repo_id=REPO_ID)
    out = stage_adapter(local, tmp_path / "b", repo_id=REPO_ID, base_model="llava-hf/llava-1.5-7b-hf")
    written = json.loads((out / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == "llava-hf/llava-1.5-7b-hf"
    meta = _front_matter((out / "README.md").read_text())
    assert meta["base_model"] == "llava-hf/llava-1.5-7b-hf" and "datasets" not in meta
    assert "No agreement report was provided" in (out / "README.md").read_text()


def test_refuses_what_cannot_be_published(adapter: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(adapter, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(PublishError, match="pickled adapter_model.bin"):
        stage_adapter(pickled, tmp_path / "x", repo_id=REPO_ID)
    with pytest.raises(PublishError, match="no adapter_config.json"):
        stage_adapter(tmp_path, tmp_path / "y", repo_id=REPO_ID)
    with pytest.raises(PublishError, match="no such Stage-1 config"):
        stage_adapter(adapter, tmp_path / "z", repo_id=REPO_ID, sft_config=tmp_path / "missing.yaml")
    bad_report = tmp_path / "agreement.json"
    bad_report.write_text('{"not": "a report"}')
    with pytest.raises(PublishError, match="not an agreement report"):
        stage_adapter(adapter, tmp_path / "w", repo_id=REPO_ID, report=bad_report)


def test_cli_registration_and_errors(adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="dermtrl")
    publish = parser.add_subparsers(dest="command").add_parser("publish").add_subparsers(dest="target")
    register_publish_adapter(publish)
    args = parser.parse_args(["publish", "adapter", str(adapter), "--repo-id", REPO_ID, "--dataset", "a/b",
                              "--dataset", "c/d", "--dry-run", str(tmp_path / "out")])
    assert args.func(args) == 0 and (tmp_path / "out" / "README.md").exists()
    assert dermtrl_main(["publish", "adapter", str(tmp_path / "nowhere"), "--repo-id", REPO_ID,
                         "--dry-run", str(tmp_path / "o2")]) == 2
    assert "nosuchadapterfolder" in _squeeze(capsys.readouterr().err)  # rich wraps lines: compare unwrapped
    assert dermtrl_main(["publish", "adapter", str(adapter), "--repo-id", "not-a-repo-id"]) == 2
    assert "mustlooklike'user-or-org/name'" in _squeeze(capsys.readouterr().err)


LOAD_BY_ID = """
import json, sys
from dermtrl.cases.synthetic import generate_case
from dermtrl.dermeval.evaluator import DermEval

evaluator = DermEval.from_pretrained(adapter=sys.argv[1])
out = []
for index in map(int, sys.argv[2:]):
    case = generate_case(index)
    r = evaluator.evaluate(case["image"], case["narrative"])
    out.append({"text": r.text, "scores": dict(r.scores), "expected": r.expected})
print("RESULT " + json.dumps(out))
"""


def test_push_then_load_by_id_gives_the_same_scores(adapter: Path, report_dir: Path, local_hub: Any,  # noqa: F811
                                                    run_against_hub: Any) -> None:  # noqa: F811
    evaluator = DermEval.from_pretrained(adapter=str(adapter))
    before = []
    for index in ROUND_TRIP_CASES:
        case = generate_case(index)
        r = evaluator.evaluate(case["image"], case["narrative"])
        before.append({"text": r.text, "scores": dict(r.scores), "expected": r.expected})
    assert all(set(b["scores"]) == set(DIMENSIONS) for b in before)  # a trained adapter: the check means something

    push = run_against_hub(
        "import sys\nfrom dermtrl.cli import main\nsys.exit(main(sys.argv[1:]))\n",  # `dermtrl publish adapter`
        "publish", "adapter", str(adapter), "--repo-id", REPO_ID, "--sft-config", str(SFT_CONFIG),
        "--soreb-config", str(SOREB_CONFIG),
        "--report", str(report_dir), "--dataset", "dermtrl/dermeval",
    )
    assert _squeeze(f"Pushed {adapter} to {REPO_ID}") in _squeeze(push.stdout)
    files = local_hub.files(REPO_ID)
    assert files["adapter_model.safetensors"]["lfs"] and "README.md" in files and "configs/stage2_soreb.yaml" in files
    assert json.loads(local_hub.read(REPO_ID, "adapter_config.json"))["base_model_name_or_path"] == TINY_MODEL_NAME
    assert "**Not a medical device.**" in local_hub.read(REPO_ID, "README.md").decode()

    load = run_against_hub(LOAD_BY_ID, REPO_ID, *map(str, ROUND_TRIP_CASES))
    after = json.loads(load.stdout.split("RESULT ", 1)[1])
    downloads = [r["path"] for r in local_hub.requests if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert any(p.endswith("adapter_model.safetensors") for p in downloads)  # loaded from the Hub, by id
    for b, a in zip(before, after, strict=True):
        assert a["scores"] == b["scores"] and a["text"] == b["text"]
        assert a["expected"] == pytest.approx(b["expected"], abs=1e-3)
    assert not local_hub.unhandled


def test_the_generation_budget_and_the_calibration_travel_with_the_adapter(adapter: Path, tmp_path: Path) -> None:
    """A DermEval loaded by Hub id reads its max_new_tokens and its calibrated intervals from the repo."""
    import shutil

    from dermtrl.agreement.calibration import Calibration
    from dermtrl.dimensions import DIMENSIONS

    local = tmp_path / "adapter"
    shutil.copytree(adapter, local)
    (local / "generation_config.json").write_text(json.dumps({"max_new_tokens": 321}))
    Calibration(quantiles={d: {"0.9": 1.0} for d in DIMENSIONS}, n=dict.fromkeys(DIMENSIONS, 10)).save(local)
    out = stage_adapter(local, tmp_path / "repo", repo_id=REPO_ID, sft_config=SFT_CONFIG)
    assert json.loads((out / "generation_config.json").read_text())["max_new_tokens"] == 321
    assert Calibration.load(out).quantiles["Safety"] == {"0.9": 1.0}
