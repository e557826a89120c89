"""SOREB (paper eqs. 2-5): baseline, loss masking, reward, loss weights, checkpoint resume, trainable parameters."""

import json
import math

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

from dermtrl.cases.synthetic import generate_cases
from dermtrl.dimensions import DIMENSIONS
from dermtrl.rewards import ScoreAlignmentReward, score_reward
from dermtrl.scripts.lora import LANGUAGE_MODEL_LORA_REGEX
from dermtrl.tiny import tiny_llava_path
from dermtrl.trainer.soreb_config import SOREBConfig
from dermtrl.trainer.soreb_trainer import EMABaseline, SOREBTrainer, policy_gradient_loss

# -- eq. 3: the EMA baseline ------------------------------------------------------------------------------------

def test_ema_baseline_matches_hand_computation():
    b = EMABaseline(beta=0.9)
    adv = b.update([-1.0, -3.0, None, -2.0])
    # init: mean of the first batch's rewards = (-1 - 3 - 2) / 3 = -2
    # b = 0.9*-2 + 0.1*-1 = -1.9,    adv = -1 - -1.9 = 0.9
    # b = 0.9*-1.9 + 0.1*-3 = -2.01, adv = -3 - -2.01 = -0.99
    # None: no reward, no update
    # b = 0.9*-2.01 + 0.1*-2 = -2.009, adv = -2 - -2.009 = 0.009
    assert adv[0] == pytest.approx(0.9) and adv[1] == pytest.approx(-0.99)
    assert adv[2] is None and adv[3] == pytest.approx(0.009)
    assert b.value == pytest.approx(-2.009) and b.count == 3
    # adv = beta * (r - b_prev), as the trainer's docstring says
    assert adv[1] == pytest.approx(0.9 * (-3.0 - -1.9))


def test_ema_baseline_explicit_init_and_state_round_trip():
    b = EMABaseline(beta=0.5, value=0.0)
    assert b.update([-2.0]) == [pytest.approx(-1.0)]  # b = 0.5*0 + 0.5*-2 = -1; adv = -2 - -1
    restored = EMABaseline(**b.state()["args"])
    assert (restored.beta, restored.value, restored.count) == (0.5, -1.0, 1)
    assert EMABaseline().update([None, None]) == [None, None]  # K = 0 everywhere: baseline untouched


# -- eq. 4: gradients only from generated tokens -----------------------------------------------------------------

def _toy_batch():
    torch.manual_seed(0)
    # two sequences: [pad, prompt, prompt, gen, gen, pad] and [prompt, prompt, prompt, gen, gen, gen]
    input_ids = torch.tensor([[0, 5, 6, 7, 8, 0], [5, 6, 5, 9, 7, 8]])
    generated = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
    logits = torch.randn(2, 6, 10)
    return logits, input_ids, generated


def test_policy_gradient_matches_hand_computation():
    logits, input_ids, generated = _toy_batch()
    adv = torch.tensor([0.5, -2.0])
    logp = torch.log_softmax(logits, dim=-1)
    mean0 = (logp[0, 2, 7] + logp[0, 3, 8]) / 2  # token t is predicted by the logits at t-1
    mean1 = (logp[1, 2, 9] + logp[1, 3, 7] + logp[1, 4, 8]) / 3
    expected = -(0.5 * mean0 + -2.0 * mean1) / 2
    assert policy_gradient_loss(logits, input_ids, generated, adv) == pytest.approx(float(expected), abs=1e-6)


def test_prompt_image_and_padding_positions_contribute_nothing():
    logits, input_ids, generated = _toy_batch()
    adv = torch.tensor([1.0, 1.0])
    base = policy_gradient_loss(logits, input_ids, generated, adv)
    perturbed = logits.clone()
    # positions whose next token is prompt/image/padding, and the last position (predicts nothing)
    for i in range(2):
        for t in range(6):
            if t == 5 or generated[i, t + 1] == 0:
                perturbed[i, t] += torch.randn(10) * 100
    assert policy_gradient_loss(perturbed, input_ids, generated, adv) == pytest.approx(float(base), abs=1e-6)
    leaf = logits.clone().requires_grad_(True)
    policy_gradient_loss(leaf, input_ids, generated, adv).backward()
    assert leaf.grad[0, :2].abs().sum() == 0 and leaf.grad[0, 4:].abs().sum() == 0  # only t=2,3 of row 0
    assert leaf.grad[0, 2:4].abs().sum() > 0


def test_no_reward_means_no_rl_term():
    logits, input_ids, generated = _toy_batch()
    leaf = logits.clone().requires_grad_(True)
    loss = policy_gradient_loss(leaf, input_ids, generated, torch.tensor([math.nan, math.nan]))
    loss.backward()
    assert float(loss) == 0.0 and leaf.grad.abs().sum() == 0
    only_second = policy_gradient_loss(logits, input_ids, generated, torch.tensor([math.nan, -2.0]))
    logp = torch.log_softmax(logits, dim=-1)
    mean1 = (logp[1, 2, 9] + logp[1, 3, 7] + logp[1, 4, 8]) / 3
    assert only_second == pytest.approx(float(2.0 * mean1), abs=1e-6)  # averaged over examples with a reward


# -- eq. 2: the reward ---------------------------------------------------------------------------------------------

def test_score_reward_is_negative_mse_on_parsed_dimensions():
    expert = dict.fromkeys(DIMENSIONS, 4.0)
    assert score_reward({"Accuracy": 2.0, "Safety": 5.0}, expert) == pytest.approx(-(4 + 1) / 2)
    assert score_reward({}, expert) is None  # K = 0: no reward, never 0
    reward = ScoreAlignmentReward()
    completions = ["Accuracy: 4\nSafety: 3", [{"role": "assistant", "content": "nothing parseable"}]]
    out = reward(prompts=["p", "p"], completions=completions, expert_scores=[expert, expert])
    assert out == [pytest.approx(-0.5), None]
    assert reward.last_parsed[0].scores == {"Accuracy": 4.0, "Safety": 3.0}
    with pytest.raises(KeyError, match="expert_scores"):
        reward(prompts=["p"], completions=["Accuracy: 4"])


# -- the trainer on the tiny model ---------------------------------------------------------------------------------

def length_reward(prompts, completions, **kwargs):
    """A deterministic user reward (TRL contract): longer samples score lower; every third has none."""
    return [None if i % 3 == 2 else -len(c) / 100 for i, c in enumerate(completions)]


def _trainer(tmp_path, reward_funcs=None, **overrides):
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_path())
    processor = AutoProcessor.from_pretrained(tiny_llava_path())
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=3, max_steps=2, logging_steps=1,
                    learning_rate=1e-2, bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                    save_strategy="no", max_completion_length=12, log_completions=False, seed=0)
    settings.update(overrides)
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_LORA_REGEX, modules_to_save=["lm_head"])
    return SOREBTrainer(model=model, args=SOREBConfig(**settings), train_dataset=generate_cases(12),
                        processing_class=processor, reward_funcs=reward_funcs or [length_reward], peft_config=peft)


def _loss_parts(trainer, weights):
    trainer.args.rl_weight, trainer.args.text_weight = weights
    torch.manual_seed(1)
    inputs = trainer._prepare_inputs([trainer.train_dataset[i] for i in range(3)])
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, inputs)
    m = trainer._metrics["train"]
    return float(loss), m["loss/rl"][-1], m["loss/text"][-1]


def test_loss_weights_follow_eq5(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.model.train()
    loss, rl, text = _loss_parts(trainer, (0.5, 1.0))
    assert loss == pytest.approx(0.5 * rl + 1.0 * text, rel=1e-5)
    assert rl != 0.0 and text > 0.0
    loss2, rl2, text2 = _loss_parts(trainer, (2.0, 3.0))
    assert loss2 == pytest.approx(2.0 * rl2 + 3.0 * text2, rel=1e-5)
    assert text2 == pytest.approx(text, rel=1e-5)


def test_no_parsed_scores_gives_only_the_text_loss(tmp_path):
    trainer = _trainer(tmp_path, reward_funcs=[ScoreAlignmentReward()])  # untrained model: nothing parses
    trainer.model.train()
    loss, rl, text = _loss_parts(trainer, (0.5, 1.0))
    assert rl == 0.0 and loss == pytest.approx(text, rel=1e-6)
    assert trainer.baseline.value is None and trainer.baseline.count == 0  # K = 0 never enters the baseline


def test_only_adapter_and_declared_modules_change(tmp_path):
    trainer = _trainer(tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed
    assert all(("lora_" in n) or ("modules_to_save" in n) for n in changed)
    assert any("lora_" in n for n in changed) and any("modules_to_save" in n for n in changed)
    logged = [h for h in trainer.state.log_history if "loss/rl" in h]
    for key in ("reward", "baseline", "advantage", "no_reward_fraction", "loss/text", "completions/mean_length",
                "completions/clipped_ratio", "rewards/length_reward/mean", "rewards/length_reward/std", "num_tokens"):
        assert key in logged[0], key
    assert not [k for k, v in logged[0].items() if isinstance(v, float) and v != v], "a NaN was averaged in"
    assert logged[0]["no_reward_fraction"] == pytest.approx(1 / 3)


class StopAfter(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_resume_restores_baseline_and_next_step_loss(tmp_path):
    common = dict(max_steps=4, save_strategy="steps", save_steps=2)
    full = _trainer(tmp_path / "full", **common)
    full.train()
    interrupted = _trainer(tmp_path / "part", **common)
    interrupted.add_callback(StopAfter(2))  # same schedule, stopped after the first checkpoint like a killed run
    interrupted.train()
    state = json.loads((tmp_path / "part/checkpoint-2/trainer_state.json").read_text())
    saved = state["stateful_callbacks"]["EMABaseline"]["args"]
    assert saved["value"] == pytest.approx(interrupted.baseline.value) and saved["count"] == 4

    resumed = _trainer(tmp_path / "part", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part/checkpoint-2"))
    step3 = {h["step"]: h for h in full.state.log_history if "loss" in h}[3]
    step3_resumed = {h["step"]: h for h in resumed.state.log_history if "loss" in h}[3]
    assert step3_resumed["loss"] == pytest.approx(step3["loss"], rel=1e-4)
    assert step3_resumed["baseline"] == pytest.approx(step3["baseline"], rel=1e-6)
    assert resumed.baseline.value == pytest.approx(full.baseline.value, rel=1e-6)
    assert resumed.baseline.count == full.baseline.count == 8


def test_model_card_names_the_trainer(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.create_model_card(dataset_name="dermtrl:synthetic")
    card = (tmp_path / "README.md").read_text()
    assert "SOREB" in card and "dermeval_soreb" in card
    assert "DermEval.from_pretrained" in card and "not a medical device" in card


def test_config_refuses_paper_violations(tmp_path):
    with pytest.raises(ValueError, match="beta"):
        SOREBConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, beta=1.0)
    with pytest.raises(ValueError, match="rl_weight"):
        SOREBConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, rl_weight=0.0)


# -- ablation and diagnosis options (not in the paper; the paper's form stays the default) ------------------------

def test_baseline_off_gives_the_raw_reward_and_running_std_scales():
    off = EMABaseline(beta=0.9, enabled=False)
    assert off.update([-1.0, -3.0]) == [pytest.approx(-1.0), pytest.approx(-3.0)]
    scaled = EMABaseline(beta=0.5, value=0.0, scaling="running_std")
    # b = -1, d = -1; sq = 1 (first), adv = -1 / 1 = -1
    # b = 0.5*-1 + 0.5*-3 = -2, d = -1; sq = 0.5*1 + 0.5*1 = 1, adv = -1
    # b = 0.5*-2 + 0.5*-10 = -6, d = -4; sq = 0.5*1 + 0.5*16 = 8.5, adv = -4 / sqrt(8.5)
    adv = scaled.update([-2.0, -3.0, -10.0])
    assert adv == [pytest.approx(-1.0), pytest.approx(-1.0), pytest.approx(-4 / math.sqrt(8.5))]
    restored = EMABaseline(**scaled.state()["args"])
    assert (restored.scaling, restored.sq, restored.enabled) == ("running_std", pytest.approx(8.5), True)


def test_reading_the_baseline_without_update_leaves_it_unchanged():
    b = EMABaseline(beta=0.9, value=-1.0, count=5)
    adv = b.advantages([-2.0, None], update=False)
    assert adv[0] == pytest.approx(-2.0 - (0.9 * -1.0 + 0.1 * -2.0)) and adv[1] is None
    assert (b.value, b.count) == (-1.0, 5)


def test_token_normalisation_weighs_tokens_equally():
    logits, input_ids, generated = _toy_batch()
    adv = torch.tensor([0.5, -2.0])
    logp = torch.log_softmax(logits, dim=-1)
    total = 0.5 * (logp[0, 2, 7] + logp[0, 3, 8]) - 2.0 * (logp[1, 2, 9] + logp[1, 3, 7] + logp[1, 4, 8])
    loss = policy_gradient_loss(logits, input_ids, generated, adv, normalization="token")
    assert loss == pytest.approx(float(-total / 5), abs=1e-6)


def test_evaluation_does_not_move_the_training_baseline(tmp_path):
    trainer = _trainer(tmp_path, baseline_init=-1.0)
    trainer.model.eval()
    before = (trainer.baseline.value, trainer.baseline.count)
    trainer.prediction_step(trainer.model, [trainer.train_dataset[i] for i in range(3)], prediction_loss_only=True)
    assert (trainer.baseline.value, trainer.baseline.count) == before
    trainer.model.train()
    trainer._prepare_inputs([trainer.train_dataset[i] for i in range(3)])
    assert trainer.baseline.count == 2  # length_reward: every third example has no reward


def test_ablation_without_text_loss_is_accepted_and_skips_it(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.model.train()
    loss, rl, text = _loss_parts(trainer, (0.5, 0.0))
    assert text == 0.0 and loss == pytest.approx(0.5 * rl, rel=1e-6)
    SOREBConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, text_weight=0.0)
    with pytest.raises(ValueError, match="advantage_scaling"):
        SOREBConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, advantage_scaling="zscore")


def test_samples_that_hit_max_completion_length_are_logged_and_warned(tmp_path):
    trainer = _trainer(tmp_path, max_completion_length=4)  # an untrained model never ends within 4 tokens
    trainer.model.train()
    inputs = trainer._prepare_inputs([trainer.train_dataset[i] for i in range(3)])
    eos = trainer.processing_class.tokenizer.eos_token_id
    generated = inputs["rl"]["input_ids"] * inputs["generated_mask"]
    expected = float((~(generated == eos).any(1)).float().mean())
    assert trainer._metrics["train"]["completions/clipped_ratio"] == [pytest.approx(expected)]
    assert expected > 0.05
    with pytest.warns(UserWarning, match="hit max_completion_length=4"):
        trainer.log({"loss": 0.0})


def test_every_config_field_is_documented_with_the_papers_open_choices():
    import dataclasses

    from trl.trainer.base_config import _BaseConfig

    inherited = {f.name for f in dataclasses.fields(_BaseConfig)}
    doc = SOREBConfig.__doc__
    for f in dataclasses.fields(SOREBConfig):
        if f.name not in inherited:  # TRL's format: one entry per field, "name (`type`, ...):"
            assert f.metadata.get("help") and f"        {f.name} (`" in doc, f"SOREBConfig.{f.name} is not documented"
    for group in ("the model", "generation", "the training", "the LLM parser", "the logging"):
        assert f"> Parameters that control {group}" in doc
    for choice in ("first batch that has one", "Update, then advantage", "eq. 4", "K = 0", "Sampling",
                   "LoRA dropout", "train_projector"):
        assert choice in doc


def test_a_model_name_is_loaded_as_trl_trainers_load_it(tmp_path):
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, use_cpu=True,
                    report_to="none", save_strategy="no", max_completion_length=8, log_completions=False,
                    model_init_kwargs={"dtype": "float32"})
    trainer = SOREBTrainer(model="dermtrl:tiny", args=SOREBConfig(**settings), train_dataset=generate_cases(4),
                           reward_funcs=[length_reward])
    assert trainer.model.dtype == torch.float32 and trainer.processing_class.tokenizer is not None
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_path())
    with pytest.raises(ValueError, match="model_init_kwargs applies only when model is a string"):
        SOREBTrainer(model=model, args=SOREBConfig(**settings), train_dataset=generate_cases(4),
                     processing_class=AutoProcessor.from_pretrained(tiny_llava_path()), reward_funcs=[length_reward])


# -- the demo around the script (`make demo`: sft_config, report_cases) --------------------------------------------

def test_the_demo_runs_stage1_when_its_output_is_absent_and_keeps_a_current_one(tmp_path, capsys):
    """`make demo` on a fresh machine: no Stage-1 output, so Stage 1 runs with sft_config; the next run finds that
    output current (same base, same settings) and continues it untouched."""
    from pathlib import Path

    import yaml

    from dermtrl.scripts.demo import prepare_stage1
    from dermtrl.tiny import resolve_model_name

    root = Path(__file__).resolve().parents[1]
    settings = yaml.safe_load((root / "recipes/configs/demo_sft.yaml").read_text())
    settings.update(synthetic_train_cases=2, max_steps=1, per_device_train_batch_size=2, dataloader_num_workers=0,
                    lora_r=4, lora_alpha=8)
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump(settings))
    adapter = tmp_path / "dermeval-tiny-sft"
    args = SOREBConfig(output_dir=str(tmp_path / "soreb"), use_cpu=True, report_to="none")
    base = resolve_model_name("dermtrl:tiny")
    prepare_stage1(str(adapter), base, str(config), args)
    assert f"Stage 1 output {adapter} is absent: running Stage 1 with {config}" in capsys.readouterr().out
    weights = adapter / "adapter_model.safetensors"
    trained = weights.stat().st_mtime_ns
    prepare_stage1(str(adapter), base, str(config), args)
    out = capsys.readouterr().out
    assert "is absent" not in out and "moved it" not in out
    assert weights.stat().st_mtime_ns == trained and not list(tmp_path.glob("dermeval-tiny-sft.*"))


def test_the_demo_report_reads_held_out_test_cases_and_is_refused_where_it_would_deadlock(tmp_path):
    from types import SimpleNamespace

    from dermtrl.cases.splits import TEST_START
    from dermtrl.scripts.demo import add_held_out_report, check_report
    from dermtrl.trainer.callbacks import HeldOutReportCallback

    added = []
    trainer = SimpleNamespace(add_callback=added.append)
    callback = add_held_out_report(trainer, 3, None, tmp_path)
    assert added == [callback] and isinstance(callback, HeldOutReportCallback)
    assert callback.cases["case_id"][0].endswith(f"-{TEST_START:06d}") and len(callback.cases) == 3
    assert callback.cases["skin_tone"] == ["III", "IV", "V"]  # 200,000 % 6 = 2: the report's skin-tone line reads it
    assert callback.out_dir == tmp_path / "report" and callback.labels[1] == "After SOREB (Stage 2)"
    zero3 = SimpleNamespace(world_size=2, deepspeed_plugin=SimpleNamespace(zero_stage=3), fsdp_plugin_args=None)
    with pytest.raises(ValueError, match=r"report_cases=5: .*ZeRO-3.*report_cases: 0"):
        check_report(5, zero3)
    check_report(0, zero3)  # no report asked: nothing to refuse
    check_report(5, SimpleNamespace(world_size=1, deepspeed_plugin=None, fsdp_plugin_args=None))
