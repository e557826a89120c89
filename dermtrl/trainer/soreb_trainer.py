"""SOREB: Score-Oriented REINFORCE with an EMA Baseline (paper Section 3.3, eqs. 2-5), on TRL's trainer base.

TRL's GRPO and RLOO need at least two generations per prompt and have no EMA baseline; SOREB samples ONE
evaluation per example and uses a moving-average baseline instead, so it is its own trainer, built the way TRL
builds its own (compare ``trl.experimental.a2po``): generation and reward in ``_prepare_inputs``, the loss in
``compute_loss``, metrics in ``self._metrics`` flushed by ``log``.

Per example (eqs. 2-5):
1. build the same prompt as inference and sample one evaluation y_hat without gradients;
2. parse its six scores and compute r = -(1/K) sum_k (s_hat_k - s*_k)^2 over the K parsed dimensions; when K = 0
   the example gets no RL term (counted as ``no_reward_fraction``, never a reward of 0);
3. b <- beta*b + (1-beta)*r and adv = r - b (eq. 3). Note that adv = beta*(r - b_prev): the update uses the
   current reward, so the advantage is beta times the advantage against the previous baseline. The baseline
   starts at ``baseline_init`` or, by default, at the mean reward of the first batch that has one, so early
   advantages are centred instead of all negative (rewards are <= 0). Under data parallelism rewards are
   gathered from every process and applied in a fixed order, so every process holds the same baseline;
4. a teacher-forced pass over prompt + sample gives L_RL = -adv * mean_{t in T} log p(y_t | y_<t, x) (eq. 4),
   where T holds only generated tokens: prompt, image and padding positions contribute nothing;
5. L = rl_weight * L_RL + text_weight * L_TEXT (eq. 5), L_TEXT the cross-entropy on the label evaluation y*.
The baseline is a stateful callback: it is written into every checkpoint and restored on resume.
"""

from __future__ import annotations

import os
import textwrap
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import trl
from accelerate.utils import gather_object
from transformers import GenerationConfig, TrainerCallback, set_seed
from transformers.trainer_callback import ExportableState
from trl.models import unwrap_model_for_generation
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import print_prompt_completions_sample, selective_log_softmax

from dermtrl.conversation import prompt_batch, training_batch, use_training_template
from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS
from dermtrl.rewards import ScoreAlignmentReward
from dermtrl.trainer.soreb_config import SOREBConfig

RewardFunc = Callable[..., list[float | None]]
#: share of samples hitting max_completion_length above which the trainer warns
CLIPPED_WARNING = 0.05


class EMABaseline(TrainerCallback, ExportableState):
    """The moving-average reward baseline of eq. 3, saved in checkpoints as a stateful callback.

    ``enabled=False`` is the b = 0 ablation (adv = r). ``scaling="running_std"`` (not in the paper) also keeps an
    EMA of (r - b)^2 and divides each advantage by its square root, so the policy-gradient scale does not follow
    the reward's scale.
    """

    def __init__(self, beta: float = 0.9, value: float | None = None, count: int = 0, enabled: bool = True,
                 scaling: str = "none", sq: float | None = None):
        self.beta = beta
        self.value = value
        self.count = count  # rewards folded in so far
        self.enabled = enabled
        self.scaling = scaling
        self.sq = sq  # EMA of (r - b)^2, for scaling="running_std"

    def advantages(self, rewards: Sequence[float | None], update: bool = True) -> list[float | None]:
        """Each reward's advantage; ``update=False`` reads the baseline without moving it (evaluation)."""
        if not update:
            saved = (self.value, self.count, self.sq)
            try:
                return self.advantages(rewards, update=True)
            finally:
                self.value, self.count, self.sq = saved
        valid = [r for r in rewards if r is not None]
        if self.value is None and valid:
            self.value = sum(valid) / len(valid)
        advantages: list[float | None] = []
        for r in rewards:
            if r is None:
                advantages.append(None)
                continue
            self.value = self.beta * self.value + (1.0 - self.beta) * r
            self.count += 1
            adv = r - self.value if self.enabled else r
            if self.scaling == "running_std":
                self.sq = adv * adv if self.sq is None else self.beta * self.sq + (1.0 - self.beta) * adv * adv
                adv = adv / max(self.sq, 1e-8) ** 0.5
            advantages.append(adv)
        return advantages

    def update(self, rewards: Sequence[float | None]) -> list[float | None]:
        """Fold rewards in, in order; return each one's advantage r - b (``None`` where there is no reward)."""
        return self.advantages(rewards, update=True)

    def state(self) -> dict:
        return {"args": {"beta": self.beta, "value": self.value, "count": self.count, "enabled": self.enabled,
                         "scaling": self.scaling, "sq": self.sq}, "attributes": {}}


def policy_gradient_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, generated_mask: torch.Tensor, advantages: torch.Tensor,
    normalization: str = "sequence",
) -> torch.Tensor:
    """L_RL of eq. 4, averaged over the examples that have an advantage.

    ``normalization="sequence"`` is eq. 4 (each sample's mean log-probability, then the batch mean);
    ``"token"`` divides the batch's sum of adv * log p by its number of generated tokens (an option, not the paper).

    ``logits`` (B, L, V) from a teacher-forced pass over ``input_ids`` (B, L); ``generated_mask`` (B, L) is 1 on
    sampled tokens only; ``advantages`` (B,) holds NaN for examples without a reward. The log-probability of
    token t is read from the logits at t-1, so only generated positions (and the logits that predict them) count.
    """
    token_logps = selective_log_softmax(logits[:, :-1, :], input_ids[:, 1:])
    mask = generated_mask[:, 1:].to(token_logps.dtype)
    mean_logp = (token_logps * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    valid = ~torch.isnan(advantages) & (mask.sum(dim=1) > 0)
    if not valid.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient sync) intact
    adv = advantages[valid].to(mean_logp.dtype)
    if normalization == "token":
        sum_logp = (token_logps * mask).sum(dim=1)[valid]
        return -(adv * sum_logp).sum() / mask[valid].sum().clamp(min=1.0)
    return -(adv * mean_logp[valid]).mean()


class SOREBTrainer(_BaseTrainer):
    """DermEval Stage 2 trainer. Examples need ``image``, ``narrative``, ``evaluation`` (y*) and ``expert_scores``.

    Args:
        model: a vision-language model (PEFT-wrapped or not) that generates the evaluation.
        args: a [`SOREBConfig`].
        train_dataset / eval_dataset: `datasets.Dataset` of cases.
        processing_class: the model's processor (the LLaVA-1.5 training template is installed on it).
        reward_funcs: TRL-style reward function(s); defaults to [`ScoreAlignmentReward`] (eq. 2). With several,
            rewards are summed, ``None`` entries skipped; an example whose every function returns ``None`` has no
            RL term.
        peft_config: a PEFT config to wrap ``model`` with (as TRL trainers accept).
    """

    _tag_names = ["trl", "soreb", "dermeval"]
    _name = "SOREB"
    # The paper's text as shipped with this project has no title page; this names its method and sections.
    _paper = {
        "title": "DermBench and DermEval: Score-Oriented REINFORCE with EMA Baseline (SOREB) for dermatology "
        "diagnostic narrative evaluation",
        "id": None,
        "citation": textwrap.dedent("""\
            @misc{dermeval_soreb,
                title  = {{DermBench and DermEval: evaluating dermatology diagnostic narratives}},
                note   = {Section 3.3: Score-Oriented REINFORCE with EMA Baseline (SOREB)},
            }"""),
    }

    # TRL renders cards from its own templates folder; point it at ours (a DermEval quick start, not a chat one)
    _template_file = os.path.relpath(Path(__file__).resolve().parents[1] / "templates" / "soreb_model_card.md",
                                     Path(trl.__file__).parent / "templates")

    @staticmethod
    def _load(name: str, args: SOREBConfig, processing_class: Any) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from dermtrl.tiny import resolve_model_name

        path = resolve_model_name(name)
        kwargs = dict(args.model_init_kwargs or {})
        dtype = kwargs.get("dtype", kwargs.pop("torch_dtype", None))
        if isinstance(dtype, str) and dtype != "auto":
            kwargs["dtype"] = getattr(torch, dtype)
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        return model, processing_class if processing_class is not None else AutoProcessor.from_pretrained(path)

    def __init__(
        self,
        model: Any,
        args: SOREBConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_funcs: RewardFunc | list[RewardFunc] | None = None,
        peft_config: Any = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
    ):
        args = args or SOREBConfig(output_dir="soreb-output")
        if isinstance(model, str):  # a Hub id, a folder or dermtrl:tiny, as TRL's trainers accept it
            model, processing_class = self._load(model, args, processing_class)
        elif args.model_init_kwargs is not None:
            raise ValueError("model_init_kwargs applies only when model is a string (a Hub id or a folder); "
                             "this model is already instantiated")
        if processing_class is None:
            raise ValueError("processing_class is required: pass the model's processor (AutoProcessor)")
        use_training_template(processing_class)
        if peft_config is not None:
            from peft import get_peft_model

            set_seed(args.seed)  # LoRA initialisation is random: make it follow the run's seed
            model = get_peft_model(model, peft_config)
        for name in ("image", "narrative", "evaluation", "expert_scores"):
            if train_dataset is not None and name not in train_dataset.column_names:
                raise ValueError(f"train_dataset: missing column {name!r} (columns: {train_dataset.column_names})")
        if reward_funcs is None:
            reward_funcs = [ScoreAlignmentReward(llm_client=self._llm_parser(args))]
        self.reward_funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        tokenizer = processing_class.tokenizer
        self.generation_config = GenerationConfig(
            max_new_tokens=args.max_completion_length, do_sample=True, temperature=args.temperature,
            top_p=args.top_p, top_k=args.top_k, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            # a sampled image placeholder would break the teacher-forced pass (image tokens != image features)
            suppress_tokens=[model.config.image_token_id],
        )
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._completions: list[dict[str, Any]] = []
        self._warned_clipped = False
        baseline = EMABaseline(beta=args.beta, value=args.baseline_init, enabled=args.use_baseline,
                               scaling=args.advantage_scaling)
        super().__init__(
            model=model, args=args, data_collator=lambda features: features, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class,
            callbacks=[baseline, *(callbacks or [])], optimizers=optimizers,
        )

    @staticmethod
    def _llm_parser(args: SOREBConfig):
        if not args.llm_parser_model:
            return None
        from dermtrl.llm.client import ClientConfig, LLMClient

        return LLMClient(ClientConfig.from_prefixed(args, "llm_parser_"))  # every endpoint setting, as any client

    @property
    def baseline(self) -> EMABaseline:
        """The live baseline (a resumed run replaces the callback object with the restored one)."""
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, EMABaseline))

    def _load_callback_state(self) -> None:
        """Restore the baseline on resume even when other callbacks' states are not restored (the default)."""
        super()._load_callback_state()
        saved = self.state.stateful_callbacks.get(EMABaseline.__name__)
        if saved and not self.args.restore_callback_states_from_checkpoint:
            saved = saved[0] if isinstance(saved, list) else saved
            self.callback_handler.remove_callback(EMABaseline)
            self.callback_handler.add_callback(EMABaseline(**saved["args"]))

    def _set_signature_columns_if_needed(self):
        self._signature_columns = ["image", "narrative", "evaluation", "expert_scores"]

    # -- generation, reward, baseline -------------------------------------------------------------------------

    def _rewards(self, prompts: list, completions: list[str], features: list[dict]) -> list[float | None]:
        columns = {k: [f[k] for f in features] for k in features[0] if k != "image"}
        per_func = [func(prompts=prompts, completions=completions, **columns) for func in self.reward_funcs]
        rewards: list[float | None] = []
        for values in zip(*per_func, strict=True):
            present = [v for v in values if v is not None]
            rewards.append(sum(present) if present else None)
        return rewards

    def _prepare_inputs(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        device = self.accelerator.device
        images = [f["image"].convert("RGB") for f in features]
        narratives = [f["narrative"] for f in features]
        prompts = prompt_batch(self.processing_class, images, narratives).to(device)
        with torch.no_grad(), unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
            sequences = unwrapped.generate(**prompts, generation_config=self.generation_config)
        prompt_len = prompts["input_ids"].shape[1]
        completion_ids = sequences[:, prompt_len:]
        # generated tokens: up to and including the first EOS; what follows is padding
        is_eos = completion_ids == self.generation_config.eos_token_id
        first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_ids.shape[1])
        positions = torch.arange(completion_ids.shape[1], device=device).expand_as(completion_ids)
        completion_mask = (positions <= first_eos.unsqueeze(1)).long()
        texts = self.processing_class.tokenizer.batch_decode(completion_ids * completion_mask,
                                                             skip_special_tokens=True)
        texts = [t.strip() for t in texts]

        rewards = self._rewards([f["narrative"] for f in features], texts, features)
        # every process applies all rewards in the same order, so all hold the same baseline
        all_rewards = gather_object([rewards]) if self.accelerator.num_processes > 1 else [rewards]
        # evaluation (prediction_step) reads the baseline but never moves it
        advantages_all = self.baseline.advantages([r for chunk in all_rewards for r in chunk],
                                                  update=mode == "train")
        offset = sum(len(chunk) for chunk in all_rewards[: self.accelerator.process_index])
        advantages = advantages_all[offset : offset + len(rewards)]
        self._log_generation(mode, features, texts, rewards, advantages, completion_mask, ~is_eos.any(1))

        text_batch = training_batch(self.processing_class, images, narratives,
                                    [f["evaluation"] for f in features]).to(device)
        attention_mask = torch.cat([prompts["attention_mask"], completion_mask], dim=1)
        generated_mask = torch.cat([torch.zeros_like(prompts["attention_mask"]), completion_mask], dim=1)
        return {
            "rl": {
                "input_ids": sequences, "attention_mask": attention_mask, "pixel_values": prompts["pixel_values"],
                # positions as generation numbered them (left padding shifts them)
                "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0),
            },
            "generated_mask": generated_mask,
            "advantages": torch.tensor([float("nan") if a is None else a for a in advantages], device=device),
            "text": dict(text_batch),
        }

    def _log_generation(self, mode, features, texts, rewards, advantages, completion_mask, clipped) -> None:
        m = self._metrics[mode]
        valid = [r for r in rewards if r is not None]
        m["no_reward_fraction"].append(1 - len(valid) / len(rewards))
        if valid:
            m["reward"].append(sum(valid) / len(valid))
            m["reward_std"].append(float(torch.tensor(valid).std()) if len(valid) > 1 else 0.0)
            m["advantage"].append(sum(a for a in advantages if a is not None) / len(valid))
            m["advantage_abs"].append(sum(abs(a) for a in advantages if a is not None) / len(valid))
        m["baseline"].append(self.baseline.value if self.baseline.value is not None else float("nan"))
        m["completion_length"].append(float(completion_mask.sum(1).float().mean()))
        # samples that ran into max_completion_length without their EOS: their score block may be cut off
        m["clipped_ratio"].append(float(clipped.float().mean()))
        parser = next((f for f in self.reward_funcs if isinstance(f, ScoreAlignmentReward)), None)
        if parser is not None and parser.last_parsed:
            parsed = parser.last_parsed
            m["parse_rate"].append(sum(len(p.scores) for p in parsed) / (len(parsed) * len(DIMENSIONS)))
            for dim in DIMENSIONS:
                errs = [abs(p.scores[dim] - f["expert_scores"][dim]) for p, f in zip(parsed, features, strict=True)
                        if dim in p.scores]
                if errs:
                    m[f"mae/{ABBREVIATIONS[dim]}"].append(sum(errs) / len(errs))
        if self.args.log_completions:
            for f, text, r, a in zip(features, texts, rewards, advantages, strict=True):
                self._completions.append({"narrative": f["narrative"], "completion": text, "reward": r,
                                          "advantage": a})

    # -- loss ---------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        logits = model(**inputs["rl"]).logits
        rl_loss = policy_gradient_loss(logits, inputs["rl"]["input_ids"], inputs["generated_mask"],
                                       inputs["advantages"], normalization=self.args.pg_normalization)
        if self.args.text_weight > 0:
            text_loss = model(**inputs["text"]).loss
            loss = self.args.rl_weight * rl_loss + self.args.text_weight * text_loss
        else:  # the ablation without the text loss: skip its forward pass
            text_loss = torch.zeros((), device=rl_loss.device)
            loss = self.args.rl_weight * rl_loss
        self._metrics[mode]["loss/rl"].append(float(rl_loss.detach()))
        self._metrics[mode]["loss/text"].append(float(text_loss.detach()))
        return (loss, logits) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        clipped = metrics.get("clipped_ratio", 0.0)
        if clipped > CLIPPED_WARNING and not self._warned_clipped:
            self._warned_clipped = True
            warnings.warn(
                f"{clipped:.0%} of the sampled evaluations hit max_completion_length="
                f"{self.args.max_completion_length} before their EOS (over {CLIPPED_WARNING:.0%}): their scores may "
                f"be cut off; raise max_completion_length (see label_lengths.json for the label lengths)", stacklevel=2)
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        super().log({**logs, **metrics}, start_time)
        self._metrics[mode].clear()
        if self._completions and self.accelerator.is_main_process and mode == "train":
            c = self._completions
            nan = float("nan")
            print_prompt_completions_sample(
                [x["narrative"] for x in c], [x["completion"] for x in c],
                {"score_alignment": [nan if x["reward"] is None else x["reward"] for x in c]},
                [nan if x["advantage"] is None else x["advantage"] for x in c],
                self.state.global_step, self.args.num_completions_to_print,
            )
        self._completions = []
