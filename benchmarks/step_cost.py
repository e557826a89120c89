"""Cost per prompt of SOREB vs TRL's GRPOTrainer (8 generations) and RLOOTrainer (2), side by side in one run, and
a SOREB step against its floor: one generation plus one SFT step (TRL's SFTTrainer, as Stage 1 runs it) of the same
batch.

Same tiny VLM (the tiny LLaVA with a fresh LoRA), same synthetic cases, same prompt, same max new tokens, same
reward (dermtrl.rewards.ScoreAlignmentReward, TRL's reward contract). Each trainer runs in its own process so
its peak memory (max RSS) is its own. Goals: SOREB <= 0.3x GRPO and <= 0.7x RLOO per prompt; a SOREB step <= 1.3x
(its generation + an SFT step); parsing and reward <= 1% of a SOREB step.

    python benchmarks/step_cost.py [--steps 6] [--max-new-tokens 64] [--trainers SOREB SFT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from _docs import add_write_docs_argument, write_console_docs  # noqa: E402  (benchmarks/ is on sys.path)


def worker(name: str, steps: int, max_new_tokens: int) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from dermtrl.cases.synthetic import generate_cases
    from dermtrl.conversation import evaluator_messages, use_training_template
    from dermtrl.rewards import ScoreAlignmentReward
    from dermtrl.scripts.lora import LANGUAGE_MODEL_LORA_REGEX
    from dermtrl.tiny import tiny_llava_path
    from dermtrl.trainer.soreb_config import SOREBConfig
    from dermtrl.trainer.soreb_trainer import SOREBTrainer

    torch.set_num_threads(1)
    reward = ScoreAlignmentReward()
    reward_time = [0.0]

    def timed_reward(prompts, completions, **kwargs):
        start = time.perf_counter()
        out = reward(prompts, completions, **kwargs)
        reward_time[0] += time.perf_counter() - start
        return out

    timed_reward.__name__ = "score_alignment"
    generate_time = [0.0]
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_path())
    processor = AutoProcessor.from_pretrained(tiny_llava_path())
    use_training_template(processor)
    peft = LoraConfig(r=8, lora_alpha=16, target_modules=LANGUAGE_MODEL_LORA_REGEX)
    batch = 8
    common = dict(output_dir=f"/tmp/dermtrl-step-cost-{name}", per_device_train_batch_size=batch, max_steps=steps,
                  learning_rate=1e-4, bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                  save_strategy="no", logging_steps=steps, max_completion_length=max_new_tokens, seed=0,
                  dataloader_num_workers=0)
    cases = generate_cases(batch * steps)
    if name == "SOREB":
        args = SOREBConfig(**common, log_completions=False)
        trainer = SOREBTrainer(model=model, args=args, train_dataset=cases, processing_class=processor,
                               reward_funcs=[timed_reward], peft_config=peft)
        prompts_per_step = batch
        sample = trainer.model.generate  # the PeftModel SOREB samples from

        def timed_generate(*args, **kwargs):
            start = time.perf_counter()
            try:
                return sample(*args, **kwargs)
            finally:
                generate_time[0] += time.perf_counter() - start

        trainer.model.generate = timed_generate
    elif name == "SFT":
        from trl import SFTConfig, SFTTrainer

        from dermtrl.conversation import TrainingCollator

        settings = {k: v for k, v in common.items() if k != "max_completion_length"}
        args = SFTConfig(**settings, remove_unused_columns=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=cases, processing_class=processor,
                             peft_config=peft, data_collator=TrainingCollator(processor))
        prompts_per_step = batch
    else:
        data = cases.map(lambda r: {"prompt": evaluator_messages(r["narrative"])},
                         remove_columns=["reference", "findings", "evaluation"])
        cls, config, generations = {"GRPO": (GRPOTrainer, GRPOConfig, 8), "RLOO": (RLOOTrainer, RLOOConfig, 2)}[name]
        # as SOREB does: never sample the image placeholder (it would break the teacher-forced pass)
        args = config(**common, num_generations=generations,
                      generation_kwargs={"suppress_tokens": [model.config.image_token_id]})
        trainer = cls(model=model, reward_funcs=[timed_reward], args=args, train_dataset=data,
                      processing_class=processor, peft_config=peft)
        prompts_per_step = batch // generations
    # the first step pays one-off costs (allocations, caches): time the rest
    times: list[float] = []
    generate_times: list[float] = []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t, self.g = time.perf_counter(), generate_time[0]

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.t)
            generate_times.append(generate_time[0] - self.g)

    trainer.add_callback(Clock())
    trainer.train()
    timed = times[1:] or times
    step = sum(timed) / len(timed)
    generated = generate_times[1:] or generate_times
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"name": name, "per_prompt_s": step / prompts_per_step, "step_s": step, "prompts_per_step": prompts_per_step,
            "generations_per_prompt": batch // prompts_per_step if name in ("GRPO", "RLOO") else
            (0 if name == "SFT" else 1), "reward_fraction": reward_time[0] / sum(times), "peak_rss_mb": peak_mb,
            "generate_s": sum(generated) / len(generated)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--trainers", nargs="+", default=["SOREB", "SFT", "GRPO", "RLOO"],
                        choices=["SOREB", "SFT", "GRPO", "RLOO"], help="which to run (SOREB is always run)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    add_write_docs_argument(parser)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, args.max_new_tokens)))
        return

    from rich.console import Console
    from rich.table import Table

    results = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name in ["SOREB", *(t for t in args.trainers if t != "SOREB")]:
        out = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(args.steps),
                              "--max-new-tokens", str(args.max_new_tokens)], env=env, capture_output=True, text=True,
                             timeout=1800)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(line[7:])
    console = Console(width=None if sys.stdout.isatty() else 120, record=True)
    table = Table(title=f"Cost per prompt, tiny LLaVA + LoRA, batch 8, {args.max_new_tokens} new tokens, "
                        f"{args.steps} steps (first untimed), 1 CPU thread")
    for col in ("trainer", "samples / prompt", "s / step", "prompts / step", "s / prompt", "peak RSS (MB)",
                "parse+reward share"):
        table.add_column(col, justify="right")
    for r in results.values():
        table.add_row(r["name"], str(r["generations_per_prompt"]), f"{r['step_s']:.3f}", str(r["prompts_per_step"]),
                      f"{r['per_prompt_s']:.4f}", f"{r['peak_rss_mb']:.0f}", f"{100 * r['reward_fraction']:.2f}%")
    console.print(table)
    s = results["SOREB"]["per_prompt_s"]
    share = results["SOREB"]["reward_fraction"]
    if "GRPO" in results:
        g = results["GRPO"]["per_prompt_s"]
        console.print(f"SOREB / GRPO per prompt: {s / g:.2f}x (goal <= 0.30x): {'met' if s / g <= 0.3 else 'NOT met'}")
    if "RLOO" in results:
        r = results["RLOO"]["per_prompt_s"]
        console.print(f"SOREB / RLOO per prompt: {s / r:.2f}x (goal <= 0.70x): {'met' if s / r <= 0.7 else 'NOT met'}")
    if "SFT" in results:
        soreb = results["SOREB"]
        floor = soreb["generate_s"] + results["SFT"]["step_s"]
        ratio = soreb["step_s"] / floor
        console.print(f"SOREB step / (its generation {soreb['generate_s']:.3f} s + SFT step "
                      f"{results['SFT']['step_s']:.3f} s): {ratio:.2f}x (goal <= 1.3x): "
                      f"{'met' if ratio <= 1.3 else 'NOT met'}")
    console.print(f"parse + reward share of a SOREB step: {100 * share:.2f}% (goal <= 1%): "
                  f"{'met' if share <= 0.01 else 'NOT met'}")
    if args.write_docs:
        write_console_docs("step_cost", "Cost of a SOREB step", console)


if __name__ == "__main__":
    main()
