"""Train a narrative writer against DermEval with TRL's GRPOTrainer, and measure it with the synthetic oracle.

The closed loop of the paper's motivation (evaluator -> reward -> better narratives), on the embedded default:

1. **Writer SFT.** A LoRA on the tiny local LLaVA learns, in a few hundred steps, to write narratives in the synthetic
   vocabulary (the synthetic cases' own narratives, every quality tier), then is merged into the base.
2. **GRPO.** TRL's ``GRPOTrainer`` trains a fresh LoRA on synthetic training cases with one reward:
   ``dermeval`` (:class:`dermtrl.rewards.DermEvalReward`, in-process or ``--evaluator_url`` of ``dermtrl serve``),
   ``oracle`` (the experts' rule itself: the ceiling), or ``judge`` (:class:`dermtrl.rewards.DermBenchJudgeReward`
   against the references, through ``--judge_base_url``).
3. **Before and after**, on synthetic *test* cases: greedy narratives, DermEval's macro score (the reward), the
   oracle's macro score (:func:`dermtrl.cases.synthetic.oracle`) and the share it can read. ``narrator_eval.json``
   in ``--output_dir`` keeps every narrative and score; ``benchmarks/closed_loop.py`` compares arms and seeds.

```bash
python recipes/grpo_narrator.py --config recipes/configs/demo_grpo_narrator.yaml
python recipes/grpo_narrator.py --config recipes/configs/demo_grpo_narrator.yaml --reward oracle --max_steps 5
```
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

ROOT = Path(__file__).resolve().parents[1]
#: What the writer is asked (the recipe's own prompt: DermEval's and the judge's prompts are untouched).
WRITER_PROMPT = "Describe the skin lesions in this picture, then give your diagnosis, differentials and advice."
REWARDS = ("dermeval", "oracle", "judge")


@dataclass
class NarratorArguments:
    reward: str = field(default="dermeval", metadata={"help": f"the GRPO reward: one of {', '.join(REWARDS)}"})
    evaluator_adapter: str | None = field(
        default="demo", metadata={"help": "DermEval adapter (folder or Hub id); 'demo': the Space's demo adapter, "
                                          "trained once per cache on first use"})
    evaluator_model: str | None = field(default=None, metadata={"help": "DermEval base (default: the adapter's)"})
    evaluator_url: str | None = field(default=None, metadata={"help": "a `dermtrl serve` URL instead of in-process"})
    evaluator_max_new_tokens: int | None = field(default=None, metadata={"help": "DermEval's generation budget"})
    dimension_weights: str | None = field(default=None,
                                          metadata={"help": "e.g. 'Accuracy=2,Safety=1' (default: the macro score)"})
    safety_gate: float = field(default=2.0, metadata={"help": "Safety at or below this gets the floor reward"})
    judge_base_url: str | None = field(default=None, metadata={"help": "--reward judge: OpenAI-compatible URL"})
    judge_model: str = field(default="judge", metadata={"help": "--reward judge: the judge's model name"})
    judge_api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "--reward judge: key variable"})
    judge_cache: str | None = field(default=None, metadata={"help": "--reward judge: response cache file"})
    synthetic_seed: int = field(default=0, metadata={"help": "seed of the synthetic cases"})
    train_cases: int = field(default=64, metadata={"help": "synthetic training cases (indices from 0)"})
    test_cases: int = field(default=32, metadata={"help": "synthetic test cases scored before and after"})
    writer_sft_steps: int = field(default=300, metadata={"help": "steps of the writer's SFT (0: none)"})
    writer_sft_batch_size: int = field(default=8, metadata={"help": "batch of the writer's SFT"})
    writer_sft_learning_rate: float = field(default=3e-3, metadata={"help": "learning rate of the writer's SFT"})
    writer_sft_cases: int = field(default=800, metadata={"help": "synthetic cases the writer's SFT reads"})
    eval_max_new_tokens: int = field(default=96, metadata={"help": "budget of the before/after narratives"})
    cpu_threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})


def parse_weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    weights = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--dimension_weights: expected NAME=WEIGHT, got {part!r}")
        weights[name.strip()] = float(value)
    return weights


def writer_messages(narrative: str | None = None, image: Any = None) -> list[dict[str, Any]]:
    """The writer's conversation: the picture and :data:`WRITER_PROMPT`, then the narrative when training."""
    image_part: dict[str, Any] = {"type": "image"} if image is None else {"type": "image", "image": image}
    text_part = {"type": "text", "text": WRITER_PROMPT}
    messages: list[dict[str, Any]] = [{"role": "user", "content": [image_part, text_part]}]
    if narrative is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": narrative}]})
    return messages


def _tokenize(processor: Any, conversations: list, *, generation_prompt: bool) -> Any:
    return processor.apply_chat_template(
        conversations, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True, return_tensors="pt",
        return_assistant_tokens_mask=not generation_prompt,
        processor_kwargs={"padding": True, "padding_side": "left" if generation_prompt else "right",
                          "add_special_tokens": True})


def writer_sft(model: Any, processor: Any, args: NarratorArguments, seed: int) -> Any:
    """A short LoRA SFT on the synthetic narratives (so the writer uses their vocabulary), merged into the base."""
    from peft import LoraConfig, get_peft_model

    from dermtrl.cases.synthetic import generate_case
    from dermtrl.scripts.lora import LANGUAGE_MODEL_LORA_REGEX

    if args.writer_sft_steps <= 0:
        return model
    torch.manual_seed(seed)
    rng = random.Random(seed)
    cases = [generate_case(i, args.synthetic_seed) for i in range(args.writer_sft_cases)]
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LANGUAGE_MODEL_LORA_REGEX,
                                                  modules_to_save=["lm_head"]))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad],
                                  lr=args.writer_sft_learning_rate)
    peft_model.train()
    for step in range(args.writer_sft_steps):
        rows = rng.sample(cases, args.writer_sft_batch_size)
        batch = _tokenize(processor, [writer_messages(r["narrative"], r["image"]) for r in rows],
                          generation_prompt=False)
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        labels[batch.pop("assistant_masks") == 0] = -100
        loss = peft_model(**batch.to(peft_model.device), labels=labels.to(peft_model.device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == args.writer_sft_steps - 1:
            print(f"writer SFT step {step + 1}/{args.writer_sft_steps}: loss {loss.item():.3f}", flush=True)
    return peft_model.merge_and_unload().eval()


@torch.no_grad()
def write(model: Any, processor: Any, images: list[Any], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy narratives for the pictures."""
    model.eval()
    tokenizer = processor.tokenizer
    out: list[str] = []
    for start in range(0, len(images), batch_size):
        batch = _tokenize(processor, [writer_messages(image=im) for im in images[start:start + batch_size]],
                          generation_prompt=True).to(model.device)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, suppress_tokens=[model.config.image_token_id])
        out += [t.strip() for t in tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:],
                                                           skip_special_tokens=True)]
    return out


class OracleReward:
    """The experts' rule as a reward (the ceiling arm): the oracle's macro score, ``None`` when it cannot read."""

    __name__ = "oracle"

    def __call__(self, prompts: list, completions: list, findings: list, label: list, **_: Any) -> list[float | None]:
        from dermtrl.cases.synthetic import oracle
        from dermtrl.rewards import completion_text

        return [oracle(completion_text(c), f, lab).macro for c, f, lab in zip(completions, findings, label,
                                                                               strict=True)]


def demo_adapter() -> str:
    """The Space's demo DermEval adapter (cached; trained on first use by the Space's own code)."""
    import importlib.util

    name = "dermeval_space_app"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, ROOT / "space" / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    path, _ = module.demo_adapter_path(module.Settings.from_env({**os.environ, "DERMEVAL_DEMO": "1"}))
    if path is None:
        raise SystemExit("no demo adapter: space/app.py cannot find recipes/configs/demo_sft.yaml")
    return str(path)


def load_evaluator(args: NarratorArguments, device: str) -> Any:
    from dermtrl.dermeval.evaluator import DermEval

    adapter = demo_adapter() if args.evaluator_adapter == "demo" else (args.evaluator_adapter or None)
    return DermEval.from_pretrained(args.evaluator_model, adapter, max_new_tokens=args.evaluator_max_new_tokens,
                                    device=device)


def score(narratives: list[str], cases: list[dict], dermeval: Any) -> list[dict[str, Any]]:
    """Per case: the narrative, DermEval's scores and macro reward, and the oracle's reading."""
    from dermtrl.cases.synthetic import oracle

    records = dermeval.evaluate([c["image"] for c in cases], narratives)
    rows = []
    for narrative, case, record in zip(narratives, cases, records, strict=True):
        scores = record.get("scores") or {}
        present = [v for v in scores.values() if v is not None]
        reading = oracle(narrative, case["findings"], case["label"])
        rows.append({"case_id": case["case_id"], "narrative": narrative, "dermeval_scores": scores,
                     "dermeval_macro": sum(present) / len(present) if present else None,
                     "dermeval_reward": dermeval.reward(record), "oracle": reading.to_dict()})
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    return {"dermeval_macro": mean(r["dermeval_macro"] for r in rows),
            "oracle_macro": mean(r["oracle"]["macro"] for r in rows),
            "oracle_readable": sum(r["oracle"]["readable"] for r in rows) / len(rows)}


def main(args: NarratorArguments, training_args: GRPOConfig, model_args: ModelConfig) -> dict[str, Any]:
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dermtrl.cases.splits import TEST_START
    from dermtrl.cases.synthetic import generate_case, generate_cases
    from dermtrl.conversation import use_training_template
    from dermtrl.rewards import DermBenchJudgeReward, DermEvalReward
    from dermtrl.scripts.lora import LANGUAGE_MODEL_LORA_REGEX
    from dermtrl.tiny import resolve_model_name

    if args.reward not in REWARDS:
        raise SystemExit(f"--reward must be one of {', '.join(REWARDS)}, got {args.reward!r}")
    if args.reward == "judge" and not args.judge_base_url:
        raise SystemExit("--reward judge needs --judge_base_url (an OpenAI-compatible endpoint)")
    if args.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(args.cpu_threads)
    weights = parse_weights(args.dimension_weights)
    device = "cuda" if torch.cuda.is_available() and not training_args.use_cpu else "cpu"
    if args.evaluator_url:
        dermeval = DermEvalReward(url=args.evaluator_url, weights=weights, safety_gate=args.safety_gate)
    else:
        dermeval = DermEvalReward(load_evaluator(args, device), weights=weights, safety_gate=args.safety_gate)

    base = resolve_model_name(model_args.model_name_or_path or "dermtrl:tiny")
    processor = AutoProcessor.from_pretrained(base)
    use_training_template(processor)
    model = AutoModelForImageTextToText.from_pretrained(base).to(device)
    model = writer_sft(model, processor, args, training_args.seed)

    test = [generate_case(TEST_START + i, args.synthetic_seed) for i in range(args.test_cases)]
    before = score(write(model, processor, [c["image"] for c in test], args.eval_max_new_tokens), test, dermeval)
    print(f"before GRPO: {summary(before)}", flush=True)

    train = generate_cases(args.train_cases, args.synthetic_seed).select_columns(
        ["image", "reference", "findings", "label"]).map(lambda r: {"prompt": writer_messages()})
    if args.reward == "dermeval":
        reward: Any = dermeval
    elif args.reward == "oracle":
        reward = OracleReward()
    else:
        from dermtrl.llm.client import ClientConfig

        reward = DermBenchJudgeReward(ClientConfig(base_url=args.judge_base_url, model=args.judge_model,
                                                   api_key_env=args.judge_api_key_env, cache_path=args.judge_cache),
                                      weights=weights, safety_gate=args.safety_gate)
    training_args.generation_kwargs = {**(training_args.generation_kwargs or {}),
                                       "suppress_tokens": [model.config.image_token_id]}
    peft_config = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                             lora_dropout=model_args.lora_dropout, target_modules=LANGUAGE_MODEL_LORA_REGEX)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=training_args, train_dataset=train,
                          processing_class=processor, peft_config=peft_config)
    trainer.train()

    after = score(write(trainer.model, processor, [c["image"] for c in test], args.eval_max_new_tokens), test,
                  dermeval)
    result = {"reward": args.reward, "seed": training_args.seed, "steps": trainer.state.global_step,
              "before": summary(before), "after": summary(after), "cases": {"before": before, "after": after}}
    print(f"after GRPO ({trainer.state.global_step} steps, reward {args.reward}): {summary(after)}", flush=True)
    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "narrator_eval.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def make_parser() -> TrlParser:
    return TrlParser((NarratorArguments, GRPOConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
