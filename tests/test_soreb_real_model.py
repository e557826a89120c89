"""SOREB on the real-model path: the sampling distribution, the kept-logit passes, the ZeRO-3 / FSDP / DDP settings,
loading at scale and the evaluator's digit logits, checked on CPU (tiny LLaVA, or a small LLaVA configuration)."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig, LlavaForConditionalGeneration
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from dermtrl.cases.synthetic import generate_cases
from dermtrl.scripts.lora import LANGUAGE_MODEL_LORA_REGEX
from dermtrl.tiny import tiny_llava_path
from dermtrl.trainer import soreb_trainer
from dermtrl.trainer.callbacks import report_backend_problem
from dermtrl.trainer.memory import Shape, measure
from dermtrl.trainer.soreb_config import SOREBConfig
from dermtrl.trainer.soreb_trainer import (
    SOREBTrainer,
    _merge_metric_parts,
    completion_logps,
    label_loss,
    policy_gradient_from_logps,
    policy_gradient_loss,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_memory_plan import LORA, small  # noqa: E402  (the small LLaVA configuration those tests use)


def length_reward(prompts, completions, **kwargs):
    return [-len(c) / 100 for c in completions]


def _settings(tmp_path, **overrides) -> dict:
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, logging_steps=1,
                    learning_rate=1e-3, bf16=False, use_cpu=True, report_to="none", save_strategy="no",
                    max_completion_length=6, log_completions=False, seed=0)
    settings.update(overrides)
    return settings


def _trainer(tmp_path, model=None, **overrides) -> SOREBTrainer:
    model = model or AutoModelForImageTextToText.from_pretrained(tiny_llava_path())
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_LORA_REGEX)
    processor = AutoProcessor.from_pretrained(tiny_llava_path())
    return SOREBTrainer(model=model, args=SOREBConfig(**_settings(tmp_path, **overrides)),
                        train_dataset=generate_cases(4), processing_class=processor, reward_funcs=[length_reward],
                        peft_config=peft)


# -- item 1: the sampling distribution after transformers' defaults ------------------------------------------------

def test_sampling_has_top_k_off_and_the_configured_top_p_and_temperature(tmp_path):
    trainer = _trainer(tmp_path, temperature=0.7, top_p=0.9)
    model = trainer.accelerator.unwrap_model(trainer.model).get_base_model()
    prepared, _ = model._prepare_generation_config(trainer.generation_config)
    assert prepared.top_k == 0 and prepared.top_p == 0.9 and prepared.temperature == 0.7 and prepared.do_sample
    warpers = model._get_logits_processor(generation_config=prepared, input_ids_seq_length=8, device="cpu")
    assert not any(isinstance(w, TopKLogitsWarper) for w in warpers)
    assert any(isinstance(w, TopPLogitsWarper) and w.top_p == 0.9 for w in warpers)
    # what an unset top_k becomes: transformers' global default, top-k 50 (the config maps None to 0)
    unset, _ = model._prepare_generation_config(GenerationConfig(do_sample=True, top_k=None))
    assert unset.top_k == 50
    assert SOREBConfig(**_settings(tmp_path, top_k=None)).top_k == 0
    with pytest.raises(ValueError, match="top_k"):
        SOREBConfig(**_settings(tmp_path, top_k=-1))


# -- item 4: logits kept for the completion and the label only ----------------------------------------------------

def _small_batch(model_config, batch=3, prompt=25, completion=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 499, (batch, prompt + completion), generator=g)
    attention = torch.ones_like(ids)
    ids[0, :3], attention[0, :3] = 0, 0  # one left-padded prompt
    ids[:, 4:20] = model_config.image_token_id  # 16 image positions per row
    pixels = torch.randn(batch, 3, 56, 56, generator=g)
    return {"input_ids": ids, "attention_mask": attention, "pixel_values": pixels,
            "position_ids": (attention.cumsum(1) - 1).clamp(min=0)}


def test_kept_position_log_probs_and_text_loss_equal_the_full_pass():
    torch.manual_seed(0)
    config = small(2)
    model = LlavaForConditionalGeneration(config).eval()
    batch, prompt, completion = _small_batch(config), 25, 7
    with torch.no_grad():
        full = model(**batch).logits
        kept = completion_logps(model, batch, completion)
    ids = batch["input_ids"]
    reference = torch.log_softmax(full[:, prompt - 1 : -1].float(), -1).gather(-1, ids[:, prompt:, None])[..., 0]
    assert kept.shape == (3, completion)
    assert torch.allclose(kept, reference, atol=1e-6, rtol=0)
    # the policy-gradient loss and its gradient agree with the full-logit form
    generated = torch.zeros_like(ids)
    generated[:, prompt:] = 1
    generated[2, -2:] = 0  # a sample that ended early: padding after its EOS
    adv = torch.tensor([0.5, float("nan"), -1.5])
    for normalization in ("sequence", "token"):
        model.zero_grad()
        policy_gradient_loss(model(**batch).logits, ids, generated, adv, normalization).backward()
        grads_full = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        loss = policy_gradient_from_logps(completion_logps(model, batch, completion), generated[:, -completion:],
                                          adv, normalization)
        loss.backward()
        grads_kept = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        assert len(grads_full) == len(grads_kept)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_full, grads_kept, strict=True))
    # L_TEXT from the label's positions only equals transformers' loss over the whole sequence
    labels = ids.clone()
    labels[:, : prompt + 2] = -100
    labels[1, prompt + 5 :] = -100  # right padding of a shorter label
    text = {k: v for k, v in batch.items() if k != "position_ids"}
    with torch.no_grad():
        expected = model(**text, labels=labels).loss
        assert abs(float(label_loss(model, {**text, "labels": labels})) - float(expected)) < 1e-6


def test_masked_positions_cannot_spread_a_nan():
    token_logps = torch.tensor([[-1.0, -2.0, float("nan")], [float("nan"), float("-inf"), float("nan")]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])  # the second row is fully masked
    adv = torch.tensor([2.0, 1.0])
    loss = policy_gradient_from_logps(token_logps, mask, adv)
    assert loss == pytest.approx(2.0 * 1.5)  # -(adv * mean log p) over the one row with tokens
    assert math.isnan(float(((token_logps * mask).sum(1) / mask.sum(1).clamp(min=1))[0]))  # the old product
    nothing = policy_gradient_from_logps(token_logps, torch.zeros_like(mask), adv)
    assert float(nothing) == 0.0


def test_keeping_logits_lowers_the_soreb_peak():
    config = small(1)
    config.text_config.vocab_size = 4096  # logits dominate, as 32,064 columns do at 7B
    shape = Shape(2, 1 + 16 + 40, 12, 12)
    peaks = {}
    for fused in (True, False):
        torch.manual_seed(0)
        (m,), _ = measure(config, {"soreb": [shape]}, lora=LORA, image=True, fused=fused)
        peaks[fused] = m.peak["train"]
    # the full passes hold at least the prompt positions' bf16 logits that the kept passes never build
    saved = peaks[False] - peaks[True]
    assert saved >= shape.batch * (shape.prompt - 1) * 4096 * 2, peaks


# -- items 2, 3, 5: the guards TRL applies, set on the trainer's init ------------------------------------------------

class _Reached(Exception):
    """Raised by a stand-in for TRL's trainer base: DeepSpeed cannot be set up here (no CUDA, no deepspeed)."""


def _init_until_base(monkeypatch, tmp_path, model, args, peft=True):
    seen = {}

    def fake_base_init(self, **kwargs):
        seen.update(kwargs)
        raise _Reached

    monkeypatch.setattr(soreb_trainer._BaseTrainer, "__init__", fake_base_init)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_LORA_REGEX) if peft else None
    with pytest.raises(_Reached):
        SOREBTrainer(model=model, args=args, train_dataset=generate_cases(2),
                     processing_class=AutoProcessor.from_pretrained(tiny_llava_path()), reward_funcs=[length_reward],
                     peft_config=peft_config)
    return seen


def test_zero3_keeps_lora_in_the_base_dtype_and_forces_reentrant_checkpointing(monkeypatch, tmp_path):
    def bf16_model():
        return AutoModelForImageTextToText.from_pretrained(tiny_llava_path(), dtype=torch.bfloat16)

    def lora_dtypes(model):
        return {p.dtype for n, p in model.named_parameters() if "lora_" in n}

    plain = SOREBConfig(**_settings(tmp_path, activation_checkpointing=True,
                                    activation_checkpointing_kwargs={"use_reentrant": False}))
    seen = _init_until_base(monkeypatch, tmp_path, bf16_model(), plain)
    assert lora_dtypes(seen["model"]) == {torch.float32}  # PEFT's default upcast, fine without ZeRO-3
    assert seen["args"].activation_checkpointing_kwargs == {"use_reentrant": False}
    assert seen["args"].ddp_find_unused_parameters is False  # every LoRA parameter is used by both passes

    zero3 = SOREBConfig(**_settings(tmp_path, activation_checkpointing=True,
                                    activation_checkpointing_kwargs={"use_reentrant": False}))
    zero3.deepspeed_plugin = SimpleNamespace(zero_stage=3)
    with pytest.warns(UserWarning, match="reentrant"):
        seen = _init_until_base(monkeypatch, tmp_path, bf16_model(), zero3)
    assert lora_dtypes(seen["model"]) == {torch.bfloat16}
    assert seen["args"].activation_checkpointing_kwargs == {"use_reentrant": True}
    assert seen["args"].gradient_checkpointing_kwargs == {"use_reentrant": True}  # the alias mirrors it

    # a Stage-1 adapter loaded with PEFT's default upcast is brought to the base dtype as well
    stage1 = tmp_path / "stage1"
    peft_model = PeftModel(bf16_model(), LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_LORA_REGEX))
    peft_model.save_pretrained(stage1)
    loaded = PeftModel.from_pretrained(bf16_model(), stage1, is_trainable=True)
    assert lora_dtypes(loaded) == {torch.float32}
    zero3_again = SOREBConfig(**_settings(tmp_path, ddp_find_unused_parameters=True))
    zero3_again.deepspeed_plugin = SimpleNamespace(zero_stage=3)
    seen = _init_until_base(monkeypatch, tmp_path, loaded, zero3_again, peft=False)
    assert lora_dtypes(seen["model"]) == {torch.bfloat16}
    assert seen["args"].ddp_find_unused_parameters is True  # a user's explicit choice stands


def test_stage2_under_fsdp_is_refused_with_the_supported_configs(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with fsdp.yaml sets
    with pytest.raises(ValueError, match=r"does not run under FSDP.*zero3\.yaml.*fsdp\.yaml is for Stage 1 only"):
        _trainer(tmp_path)


def test_held_out_report_is_refused_where_it_would_deadlock():
    zero3 = SimpleNamespace(zero_stage=3)
    assert report_backend_problem(SimpleNamespace(world_size=1, deepspeed_plugin=zero3, fsdp_plugin_args=None)) is None
    zero2 = SimpleNamespace(world_size=8, deepspeed_plugin=SimpleNamespace(zero_stage=2), fsdp_plugin_args=None)
    assert report_backend_problem(zero2) is None
    problem = report_backend_problem(SimpleNamespace(world_size=8, deepspeed_plugin=zero3, fsdp_plugin_args=None))
    assert "ZeRO-3" in problem and "report_cases: 0" in problem
    fsdp = SimpleNamespace(world_size=2, deepspeed_plugin=None, fsdp_plugin_args={"fsdp_version": 2})
    assert "FSDP" in report_backend_problem(fsdp)


def test_sampling_re_enables_checkpointing_with_the_users_settings(tmp_path):
    trainer = _trainer(tmp_path, activation_checkpointing=True,
                       activation_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": 1})
    trainer.model.train()
    base = trainer.accelerator.unwrap_model(trainer.model).get_base_model()
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})  # as train() does
    calls = []
    original = base.activation_checkpointing_enable

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    base.activation_checkpointing_enable = spy
    states = []
    original_generate = base.generate

    def generate(*args, **kwargs):
        states.append(base.is_activation_checkpointing)
        return original_generate(*args, **kwargs)

    base.generate = generate
    inputs = trainer._prepare_inputs([trainer.train_dataset[i] for i in range(2)])
    assert states == [False]  # sampled without checkpointing
    assert calls == [{"activation_checkpointing_kwargs": {"use_reentrant": False}, "every_n_layers": 1,
                      "offload": False}]
    assert base.is_activation_checkpointing
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()  # the checkpointed passes train the adapter
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainer.model.named_parameters()
               if "lora_" in n)


def test_metrics_are_averaged_over_every_process():
    rank0 = {"reward": (-2.0, 2), "loss/rl": (1.0, 1)}
    rank1 = {"reward": (-6.0, 2), "mae/Acc": (3.0, 1)}  # a metric only one process logged
    merged = _merge_metric_parts([rank0, rank1])
    assert merged == {"reward": pytest.approx(-2.0), "loss/rl": 1.0, "mae/Acc": 3.0}


def test_the_trainer_step_trains_with_the_kept_logit_passes(tmp_path):
    trainer = _trainer(tmp_path, max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert any(not torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters() if n in before)
    logged = [h for h in trainer.state.log_history if "loss/rl" in h]
    assert logged and all(math.isfinite(h["loss/rl"]) and math.isfinite(h["loss/text"]) for h in logged)


# -- item 6: loading at scale ----------------------------------------------------------------------------------------

def test_each_gpu_process_loads_onto_its_own_device(monkeypatch):
    import accelerate
    import transformers
    from trl import ModelConfig

    from dermtrl.scripts.script_args import load_model

    seen = {}
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained",
                        lambda path, **kwargs: seen.update(kwargs) or "model")
    args = ModelConfig(model_name_or_path="dermtrl:tiny", dtype="bfloat16")
    monkeypatch.setattr(accelerate, "PartialState", lambda: SimpleNamespace(device=torch.device("cpu")))
    assert load_model(args) == "model" and seen["device_map"] is None and seen["dtype"] == torch.bfloat16
    monkeypatch.setattr(accelerate, "PartialState", lambda: SimpleNamespace(device=torch.device("cuda", 3)))
    load_model(args)
    assert seen["device_map"] == {"": torch.device("cuda", 3)}  # DDP / ZeRO-2: rank 3 of the node loads on cuda:3
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    load_model(args)
    assert seen["device_map"] is None  # FSDP places the weights itself


def test_evaluator_keeps_only_the_digit_logits_and_they_match_the_full_ones():
    from dermtrl.conversation import prompt_batch
    from dermtrl.dermeval.evaluator import DermEval

    evaluator = DermEval.from_pretrained(tiny_llava_path(), device="cpu", max_new_tokens=12)
    cases = generate_cases(2)
    images = [c["image"].convert("RGB") for c in cases]
    batch = prompt_batch(evaluator.processor, images, [c["narrative"] for c in cases])
    captured = []
    original = evaluator._score_distributions
    evaluator._score_distributions = lambda ids, logits: captured.append(logits) or original(ids, logits)
    evaluator._generate(images, [c["narrative"] for c in cases])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = evaluator.model.generate(**batch, max_new_tokens=12, do_sample=False, output_logits=True,
                                       return_dict_in_generate=True, pad_token_id=evaluator.tokenizer.pad_token_id,
                                       suppress_tokens=[evaluator.model.config.image_token_id])
    full = torch.stack(out.logits, dim=1).float()[..., evaluator._digit_ids]
    assert len(captured) == 2 and captured[0].shape == (full.shape[1], 6)
    for i in range(2):
        assert torch.allclose(captured[i], full[i], atol=1e-5)


def test_sampling_passes_the_zero3_gather_switch_and_syncs_only_sharded_processes(monkeypatch, tmp_path):
    trainer = _trainer(tmp_path, ds3_gather_for_generation=False)
    trainer.model.train()
    seen = {}
    original = soreb_trainer.unwrap_model_for_generation

    def spy(model, accelerator, **kwargs):
        seen.update(kwargs)
        return original(model, accelerator, **kwargs)

    monkeypatch.setattr(soreb_trainer, "unwrap_model_for_generation", spy)
    base = trainer.accelerator.unwrap_model(trainer.model)
    original_generate = base.generate

    def generate(*args, **kwargs):
        seen["synced_gpus"] = kwargs["synced_gpus"]
        return original_generate(*args, **kwargs)

    base.generate = generate
    inputs = trainer._prepare_inputs([trainer.train_dataset[i] for i in range(2)])
    assert seen["gather_deepspeed3_params"] is False
    assert seen["synced_gpus"] is False  # one process: nothing to wait for
    keep, generated = inputs["logits_to_keep"], inputs["generated_mask"]
    assert 0 < keep <= 6 and generated[:, -keep:].sum() == generated.sum() > 0  # every sampled token is kept
