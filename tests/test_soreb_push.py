"""recipes/soreb.py with push_to_hub: every file is written first, then pushed once, against the local Hub stand-in
(``local_hub`` and ``run_against_hub`` come from tests/hub_fixtures.py, loaded by conftest.py)."""

from __future__ import annotations

import pytest

from dermtrl.tiny import tiny_llava_path

REPO_ID = "dermtrl-test/dermeval-tiny-soreb"
pytestmark = pytest.mark.timeout(300)

RUN = """
import sys
from dermtrl.scripts.soreb import main, make_parser

out, repo = sys.argv[1:3]
args = make_parser().parse_args_and_config(args=[
    "--model_name_or_path", "dermtrl:tiny", "--dataset_name", "dermtrl:synthetic", "--synthetic_train_cases", "2",
    "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--output_dir", out, "--max_steps", "1",
    "--per_device_train_batch_size", "2", "--max_completion_length", "8", "--use_cpu", "true", "--bf16", "false",
    "--report_to", "none", "--save_strategy", "no", "--log_completions", "false", "--cpu_threads", "1",
    "--push_to_hub", "true", "--hub_model_id", repo,
])
main(*args).end()
"""


def test_the_adapter_and_every_file_beside_it_are_pushed_in_one_commit(local_hub, run_against_hub, tmp_path):
    tiny_llava_path()  # built (or found) before the script runs with its own cache settings
    run_against_hub(RUN, str(tmp_path / "out"), REPO_ID)
    titles = local_hub.commit_titles(REPO_ID)
    pushes = [t for t in titles if t != "initial commit"]
    assert len(pushes) == 1, titles  # not a "Model save" commit before the final one
    files = local_hub.files(REPO_ID)
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "generation_config.json",
                 "label_lengths.json", "processor_config.json", "tokenizer_config.json"):
        assert name in files, (name, sorted(files))
    assert "SOREB" in local_hub.read(REPO_ID, "README.md").decode()
    assert not local_hub.unhandled
