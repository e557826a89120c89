"""The projector option: LoRA only by default (the paper), the projector trained in full on request (LLaVA-1.5)."""

import os
from pathlib import Path

import pytest
from peft import get_peft_model
from transformers import AutoModelForImageTextToText
from trl import ModelConfig

from dermtrl.scripts.script_args import DermEvalScriptArguments, check_continued_adapter, lora_config
from dermtrl.tiny import tiny_llava_path


def _trainable(train_projector: bool):
    script_args = DermEvalScriptArguments(dataset_name="dermtrl:synthetic", train_projector=train_projector)
    model_args = ModelConfig(model_name_or_path="dermtrl:tiny", use_peft=True, lora_r=64, lora_alpha=16,
                             lora_dropout=0.05)
    config = lora_config(script_args, model_args)
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(tiny_llava_path()), config)
    return model, [n for n, p in model.named_parameters() if p.requires_grad]


def test_default_is_lora_only_on_the_language_model():
    _, trainable = _trainable(False)
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)


def test_train_projector_trains_it_in_full(tmp_path):
    model, trainable = _trainable(True)
    projector = [n for n in trainable if "multi_modal_projector" in n]
    assert projector and all("modules_to_save" in n for n in projector)
    assert not [n for n in trainable if "vision_tower" in n]  # the CLIP tower stays frozen
    assert all("lora_" in n for n in trainable if n not in projector)
    model.save_pretrained(tmp_path / "with")
    check_continued_adapter(DermEvalScriptArguments(train_projector=True), str(tmp_path / "with"),
                            str(tiny_llava_path()))


def test_stage2_refuses_a_projector_choice_its_adapter_does_not_match(tmp_path):
    model, _ = _trainable(False)
    model.save_pretrained(tmp_path / "lora-only")
    with pytest.raises(ValueError, match="does not train the projector"):
        check_continued_adapter(DermEvalScriptArguments(train_projector=True), str(tmp_path / "lora-only"),
                                str(tiny_llava_path()))
    check_continued_adapter(DermEvalScriptArguments(train_projector=False), str(tmp_path / "lora-only"),
                            str(tiny_llava_path()))


def test_stage2_refuses_an_adapter_trained_on_another_base(tmp_path):
    """Its LoRA weights would be applied to a model they were not trained for and score nonsense (a Stage-1
    adapter of tiny model v5 on the v6 base parsed 0 of 200 held-out evaluations)."""
    model, _ = _trainable(False)
    model.save_pretrained(tmp_path / "adapter")
    other = tmp_path / "another-base"
    other.mkdir()
    refused = r"sft_adapter .*adapter was trained on .*, but model_name_or_path is .*another-base"
    with pytest.raises(ValueError, match=refused):
        check_continued_adapter(DermEvalScriptArguments(), str(tmp_path / "adapter"), str(other))
    # the same folder written another way is the same base
    relative = Path(os.path.relpath(tiny_llava_path()))
    check_continued_adapter(DermEvalScriptArguments(), str(tmp_path / "adapter"), str(relative))


def test_the_recipe_sets_aside_its_own_stage1_output_trained_on_another_base(tmp_path, capsys):
    """`make demo` after an upgrade of the tiny model: the old Stage-1 output is renamed (kept), so Stage 1 runs
    again on the current base instead of Stage 2 continuing an adapter that does not fit it."""
    from dermtrl.scripts.demo import set_aside_if_trained_on_another_base

    model, _ = _trainable(False)
    adapter = tmp_path / "dermeval-tiny-sft"
    model.save_pretrained(adapter)
    set_aside_if_trained_on_another_base(str(adapter), str(tiny_llava_path()))
    assert adapter.exists()  # trained on this base: kept in place
    other = tmp_path / "tiny-llava-v7"
    other.mkdir()
    set_aside_if_trained_on_another_base(str(adapter), str(other))
    aside = tmp_path / f"dermeval-tiny-sft.{tiny_llava_path().name}"
    assert not adapter.exists() and (aside / "adapter_config.json").exists()
    assert f"moved it to {aside}" in capsys.readouterr().out


def test_train_projector_needs_lora():
    with pytest.raises(ValueError, match="use_peft"):
        lora_config(DermEvalScriptArguments(train_projector=True), ModelConfig(model_name_or_path="x"))


def test_the_recipe_sets_aside_a_stage1_output_its_edited_config_would_not_produce(tmp_path, capsys):
    """`make demo` after an edit of demo_sft.yaml (here the learning rate): the old Stage-1 output is renamed, so
    Stage 1 runs again with the new settings instead of Stage 2 silently continuing the old weights."""
    import yaml

    from dermtrl.scripts import sft
    from dermtrl.scripts.demo import set_aside_if_trained_otherwise
    from dermtrl.scripts.script_args import save_stage1_settings, stage1_settings

    config = tmp_path / "sft.yaml"
    settings = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes/configs/demo_sft.yaml").read_text())
    config.write_text(yaml.safe_dump(settings))
    adapter = tmp_path / "dermeval-tiny-sft"
    model, _ = _trainable(False)
    model.save_pretrained(adapter)
    save_stage1_settings(stage1_settings(*sft.make_parser().parse_args_and_config(
        args=["--config", str(config), "--output_dir", str(adapter)])), str(adapter))
    assert not set_aside_if_trained_otherwise(str(adapter), str(config))  # its own config: kept in place
    assert adapter.exists()

    config.write_text(yaml.safe_dump({**settings, "learning_rate": settings["learning_rate"] / 2}))
    assert set_aside_if_trained_otherwise(str(adapter), str(config))
    aside = tmp_path / "dermeval-tiny-sft.previous"
    assert not adapter.exists() and (aside / "adapter_config.json").exists()
    out = capsys.readouterr().out
    assert f"moved it to {aside}" in out and f"learning_rate {settings['learning_rate']!r} -> " in out

    model.save_pretrained(adapter)  # an output of an earlier dermtrl, with no settings recorded
    assert set_aside_if_trained_otherwise(str(adapter), str(config))
    assert (tmp_path / "dermeval-tiny-sft.previous-2").exists()
    assert "records no Stage-1 settings" in capsys.readouterr().out


_GUARD_SCRIPT = """
import os
import sys

from dermtrl.scripts.demo import set_aside_stale_stage1
from dermtrl.trainer.soreb_config import SOREBConfig

adapter, base, config, out = sys.argv[1:5]
args = SOREBConfig(output_dir=out, use_cpu=True, report_to="none")
args.distributed_state.wait_for_everyone()  # both processes reach the check together, as in a real launch
moved = set_aside_stale_stage1(adapter, base, config, args)
# one file per process: lines two processes print to one pipe can interleave
with open(os.path.join(out, f"process{args.process_index}.txt"), "w") as f:
    f.write(f"process {args.process_index} of {args.world_size}: moved={moved} present_after={os.path.exists(adapter)}")
"""


def test_in_a_launch_of_two_processes_the_main_one_sets_the_stale_output_aside_once(tmp_path):
    """A launch of two processes (torchrun, gloo on CPU) with a stale Stage-1 output: the main process renames it,
    once; the other waits, then finds it moved, so both go on to run Stage 1 (neither sees it half-moved)."""
    import subprocess
    import sys

    adapter = tmp_path / "dermeval-tiny-sft"
    model, _ = _trainable(False)
    model.save_pretrained(adapter)  # records no Stage-1 settings: stale
    config = Path(__file__).resolve().parents[1] / "recipes/configs/demo_sft.yaml"
    script = tmp_path / "guard.py"
    script.write_text(_GUARD_SCRIPT)
    (tmp_path / "out").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # a rendezvous on loopback at a free port (port 0: no fixed port another run could hold)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0", str(script), str(adapter),
                          str(tiny_llava_path()), str(config), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [(tmp_path / "out" / f"process{k}.txt").read_text() for k in range(2)]
    assert lines == ["process 0 of 2: moved=True present_after=False",
                     "process 1 of 2: moved=False present_after=False"], run.stdout
    assert run.stdout.count("moved it to") == 1
    assert (tmp_path / "dermeval-tiny-sft.previous" / "adapter_config.json").exists()
    assert not (tmp_path / "dermeval-tiny-sft.previous-2").exists()
