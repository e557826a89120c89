"""`make demo` and the recipes print what a user needs: no launcher warnings (every setting is passed), no
deprecated settings in the recipe configs, and the one library FutureWarning we cannot fix filtered by its message
only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def _demo_command() -> list[str]:
    out = subprocess.run(["make", "-n", "demo", "STAMP="], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in out.splitlines() if "accelerate launch" in ln]
    return line.split()


def test_the_demo_launcher_prints_no_warnings(tmp_path):
    command = _demo_command()
    launch = command.index("launch")
    flags = command[launch + 1:command.index("recipes/soreb.py")]
    for flag in ("--num_machines", "--mixed_precision", "--dynamo_backend", "--num_cpu_threads_per_process"):
        assert flag in flags, flag
    script = tmp_path / "hello.py"
    script.write_text("import dermtrl\nprint('launched')\n")
    accelerate = Path(sys.executable).with_name("accelerate")
    done = subprocess.run([str(accelerate), "launch", *flags, str(script)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0 and "launched" in done.stdout, done.stderr
    assert "were not passed" not in done.stderr and "Warning" not in done.stderr, done.stderr


def test_recipe_configs_use_no_deprecated_settings(tmp_path):
    from dermtrl.scripts import sft, soreb

    parsers = {"demo_sft.yaml": sft.make_parser(), "demo_soreb.yaml": soreb.make_parser()}
    for name, parser in parsers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            parser.parse_args_and_config(args=["--config", str(ROOT / "recipes" / "configs" / name),
                                               "--output_dir", str(tmp_path / name)])
    for path in (ROOT / "recipes" / "configs").glob("*.yaml"):  # the GPU configs too (not parsed on a CPU)
        assert not re.search(r"^gradient_checkpointing:", path.read_text(), re.M), path.name


_TRIGGER = """
import warnings
import dermtrl
from dermtrl.tiny import tiny_llava_path
from transformers import AutoModelForImageTextToText
model = AutoModelForImageTextToText.from_pretrained(tiny_llava_path())
print("reads the property:", model.is_activation_checkpointing is False)
model.is_gradient_checkpointing  # as TRL's unwrap_model_for_generation (and peft before 0.22) still read it
warnings.warn("some other deprecation", FutureWarning)
"""


def test_only_the_unfixable_library_warning_is_filtered():
    """In a fresh interpreter showing every warning once: the library one is gone, any other still shows."""
    done = subprocess.run([sys.executable, "-W", "default", "-c", _TRIGGER], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "is_gradient_checkpointing" not in done.stderr and "some other deprecation" in done.stderr
    drop_filter = ("warnings.filters[:] = [f for f in warnings.filters "
                   "if not (f[1] is not None and 'is_gradient' in f[1].pattern)]\n")
    unfiltered = _TRIGGER.replace("import dermtrl\n", "import dermtrl\n" + drop_filter)
    control = subprocess.run([sys.executable, "-W", "default", "-c", unfiltered], cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}, timeout=120)
    assert control.returncode == 0 and "is_gradient_checkpointing" in control.stderr  # the warning is real


def test_the_demo_recipes_show_the_progress_bar_but_not_a_metrics_dict_per_step(tmp_path):
    """`print_logs: false` (both demo configs): the bar stays, the per-step metrics dict is not printed, and the
    metrics still reach trainer_state.json; `print_logs: true` prints them as Trainer does."""
    import json

    config = ROOT / "recipes" / "configs" / "demo_sft.yaml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    def run(out: Path, *extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "dermtrl.cli", "sft", "--config", str(config), "--output_dir",
                               str(out), "--synthetic_train_cases", "8", "--max_steps", "2", "--logging_steps", "1",
                               "--save_strategy", "steps", "--save_steps", "2", *extra],
                              cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr

    quiet = run(tmp_path / "quiet")
    assert "{'loss'" not in quiet
    assert "it/s]" in quiet or "s/it]" in quiet  # the bar itself is kept
    state = json.loads(next((tmp_path / "quiet").glob("checkpoint-*/trainer_state.json")).read_text())
    assert any("loss" in entry for entry in state["log_history"])
    assert "{'loss'" in run(tmp_path / "loud", "--print_logs", "true")
