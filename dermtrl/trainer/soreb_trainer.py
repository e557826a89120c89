"""SOREB: Score-Oriented REINFORCE with an EMA Baseline (paper Section 3.3, eqs. 2-5), on TRL's trainer base.

TRL's GRPO and RLOO need at least two generations per prompt and have no EMA baseline; SOREB samples ONE
evaluation per example and uses a moving-average baseline instead, so it is its own trainer, built the way TRL
builds its own (compare ``trl.experimental.a2po``): generation and reward in ``_prepare_inputs``, the loss in
``compute_loss``, metrics in ``self._metrics`` flushed by ``log``.

Per example (eqs. 2-5):
1. build the same prompt as inference and sample one evaluation y_hat without gradients, from the model's own
   distribution (temperature and top-p as configured, top-k off);
2. parse its six scores and compute r = -(1/K) sum_k (s_hat_k - s*_k)^2 over the K parsed dimensions; when K = 0
   the example gets no RL term (counted as ``no_reward_fraction``, never a reward of 0);
3. b <- beta*b + (1-beta)*r and adv = r - b (eq. 3). Note that adv = beta*(r - b_prev): the update uses the
   current reward, so the advantage is beta times the advantage against the previous baseline. The baseline
   starts at ``baseline_init`` or, by default, at the mean reward of the first batch that has one, so early
   advantages are centred instead of all negative (rewards are <= 0). Under data parallelism rewards are
   gathered from every process and applied in a fixed order, so every process holds the same baseline;
4. a teacher-forced pass over prompt + sample gives L_RL = -adv * mean_{t in T} log p(y_t | y_<t, x) (eq. 4),
   where T holds only generated tokens: prompt, image and padding positions contribute nothing (their logits are
   not even computed: ``logits_to_keep``);
5. L = rl_weight * L_RL + text_weight * L_TEXT (eq. 5), L_TEXT the cross-entropy on the label evaluation y*.
The baseline is a stateful callback: it is written into every checkpoint and restored on resume.
"""

from __future__ import annotations

import json
import os
import textwrap
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import trl
from accelerate.utils import gather_object, str_to_bool
from transformers import GenerationConfig, TrainerCallback, set_seed
from transformers.trainer_callback import ExportableState
from trl.distributed import DistributedBackend
from trl.models import unwrap_model_for_generation
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import print_prompt_completions_sample, selective_log_softmax

from dermtrl.cases.images import read_cell
from dermtrl.conversation import prompt_batch, training_batch, use_training_template
from dermtrl.rewards import ScoreAlignmentReward
from dermtrl.trainer.soreb_config import SOREBConfig

RewardFunc = Callable[..., list[float | None]]
#: With ``log_completions``, every sampled completion (step, narrative, completion, reward, advantage) is appended
#: here under ``output_dir``.
COMPLETIONS_FILE = "completions.jsonl"
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
    """L_RL of eq. 4 from the logits of a teacher-forced pass over the whole sequence.

    ``logits`` (B, L, V) from a pass over ``input_ids`` (B, L); ``generated_mask`` (B, L) is 1 on sampled tokens
    only; ``advantages`` (B,) holds NaN for examples without a reward. The log-probability of token t is read from
    the logits at t-1, so only generated positions (and the logits that predict them) count. The trainer itself
    keeps only the completion's logits (:func:`completion_logps`) and calls :func:`policy_gradient_from_logps`.
    """
    token_logps = selective_log_softmax(logits[:, :-1, :], input_ids[:, 1:])
    return policy_gradient_from_logps(token_logps, generated_mask[:, 1:], advantages, normalization)


def policy_gradient_from_logps(
    token_logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, normalization: str = "sequence",
) -> torch.Tensor:
    """L_RL of eq. 4, averaged over the examples that have an advantage.

    ``token_logps`` (B, T) are log p(y_t | y_<t, x) of the sampled tokens, ``mask`` (B, T) is 1 where a token is
    generated (0 on padding after EOS). ``normalization="sequence"`` is eq. 4 (each sample's mean log-probability,
    then the batch mean); ``"token"`` divides the batch's sum of adv * log p by its number of generated tokens (an
    option, not the paper). Masked positions are zeroed with ``masked_fill``, never multiplied by 0, so a NaN or
    -inf there (a fully masked row) cannot leak into the loss.
    """
    keep = mask.bool()
    logps = token_logps.masked_fill(~keep, 0.0)
    counts = keep.sum(dim=1)
    valid = ~torch.isnan(advantages) & (counts > 0)
    if not valid.any():
        return logps.sum() * 0.0  # keeps the graph (and DDP's gradient sync) intact
    adv = advantages[valid].to(logps.dtype)
    sum_logp = logps.sum(dim=1)[valid]
    if normalization == "token":
        return -(adv * sum_logp).sum() / counts[valid].sum().clamp(min=1).to(logps.dtype)
    return -(adv * sum_logp / counts[valid].to(logps.dtype)).mean()


def completion_logps(model: Any, batch: dict[str, torch.Tensor], logits_to_keep: int) -> torch.Tensor:
    """log p of the last ``logits_to_keep`` tokens of ``batch["input_ids"]``, from logits kept for them only.

    The completions sit right after the left-padded prompts, so the language model computes logits for the last
    ``logits_to_keep + 1`` positions alone (the prompt's and the 576 image positions' B x L x V logits are never
    built), and the log-probabilities come from TRL's ``selective_log_softmax`` (the chosen token's logit minus
    the log-sum-exp) in fp32. ``use_cache=False``: a training pass needs no KV cache.
    """
    logits = model(**batch, logits_to_keep=logits_to_keep + 1, use_cache=False).logits[:, :-1, :]
    return selective_log_softmax(logits.float(), batch["input_ids"][:, -logits_to_keep:])


def label_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """L_TEXT: the mean cross-entropy on the labelled tokens (y*), from the logits that predict them only.

    Equal to ``model(**batch).loss`` (transformers' mean over labelled tokens), without the logits of the prompt
    and the image: the pass keeps the positions from the first labelled token of any row to the end.
    """
    labels = batch["labels"]
    labelled = labels != -100
    if not labelled.any():
        raise ValueError("text batch: no labelled token (every label is -100)")
    first = int(labelled.int().argmax(dim=1)[labelled.any(dim=1)].min())
    keep = min(labels.shape[1], labels.shape[1] - first + 1)  # a label at position 0 has nothing to predict it
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits[:, :-1, :]
    targets = labels[:, -(keep - 1):]
    mask = targets != -100
    logps = selective_log_softmax(logits.float(), targets.clamp(min=0)).masked_fill(~mask, 0.0)
    return -logps.sum() / mask.sum()


def _merge_metric_parts(parts: Sequence[dict[str, tuple[float, int]]]) -> dict[str, float]:
    """Per-process (sum, count) of each metric -> the mean over every process (metrics logged by some only too)."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for part in parts:
        for key, (total, count) in part.items():
            totals[key][0] += total
            totals[key][1] += count
    return {k: total / count for k, (total, count) in totals.items() if count}


FSDP_REFUSAL = (
    "SOREB (Stage 2) does not run under FSDP: sampling from an FSDP-sharded PeftModel skips the root module's "
    "all-gather and its processes can stop at different lengths. Use DeepSpeed ZeRO-3 "
    "(recipes/accelerate/zero3.yaml) or ZeRO-2 / DDP for Stage 2; recipes/accelerate/fsdp.yaml is for Stage 1 only."
)


def uses_fsdp(args: Any) -> bool:
    """Whether these arguments (or ``accelerate launch`` with an FSDP config) will make Trainer shard with FSDP."""
    return args.fsdp_plugin_args is not None or bool(str_to_bool(os.environ.get("ACCELERATE_USE_FSDP", "false")))


def cast_adapter_to_base_dtype(model: Any) -> None:
    """Trainable (adapter) parameters in the frozen base's floating dtype, as ``autocast_adapter_dtype=False``
    leaves them: ZeRO-3 cannot gather bf16 and fp32 parameters together."""
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    if len(frozen) != 1:
        return
    (dtype,) = frozen
    for p in model.parameters():
        if p.requires_grad and p.dtype != dtype:
            p.data = p.data.to(dtype)


def sampling_images(features: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The batch's pictures through the project's one reader (EXIF orientation, transparency on white, 16-bit
    scaled), whatever a cell holds (a path from a data file, bytes, a PIL image): Stage 2 samples from the pixels
    Stage 1 trained on and inference sees."""
    return [read_cell(f["image"], where=f"case {f.get('case_id', '?')!r}").image for f in features]


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
        prompt_fn: Callable[[str], str] | None = None,
    ):
        # ``prompt_fn``: DermEval's user text from a narrative; None is the paper's prompt (the official release's
        # for an adapter trained on its target format), the same in sampling and in the text loss
        self.prompt_fn = prompt_fn
        args = args or SOREBConfig(output_dir="soreb-output")
        if isinstance(model, str):  # a Hub id, a folder or dermtrl:tiny, as TRL's trainers accept it
            model, processing_class = self._load(model, args, processing_class)
        elif args.model_init_kwargs is not None:
            raise ValueError("model_init_kwargs applies only when model is a string (a Hub id or a folder); "
                             "this model is already instantiated")
        if processing_class is None:
            raise ValueError("processing_class is required: pass the model's processor (AutoProcessor)")
        use_training_template(processing_class)
        if uses_fsdp(args):
            raise ValueError(FSDP_REFUSAL)
        zero3 = args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3
        if peft_config is not None:
            from peft import get_peft_model

            set_seed(args.seed)  # LoRA initialisation is random: make it follow the run's seed
            # ZeRO-3 gathers parameters in the dtype of the first one: fp32 LoRA beside a bf16 base fails at the
            # first optimizer step (TRL's SFT and GRPO trainers pass the same flag)
            model = get_peft_model(model, peft_config, **({"autocast_adapter_dtype": False} if zero3 else {}))
        is_peft = hasattr(model, "peft_config")
        if zero3 and is_peft:
            cast_adapter_to_base_dtype(model)  # a Stage-1 adapter loaded by PeftModel.from_pretrained is fp32 too
        if is_peft and zero3 and args.activation_checkpointing:
            # PEFT under ZeRO-3 needs reentrant checkpointing (as TRL forces it). Set on the field Trainer reads
            # (activation_checkpointing_kwargs); its deprecated alias mirrors it.
            kwargs = dict(args.activation_checkpointing_kwargs or {})
            if kwargs.get("use_reentrant") is False:
                warnings.warn("PEFT with DeepSpeed ZeRO-3 needs reentrant activation checkpointing: use_reentrant "
                              "is set to True", stacklevel=2)
            kwargs["use_reentrant"] = True
            args.activation_checkpointing_kwargs = args.gradient_checkpointing_kwargs = kwargs
        if is_peft and args.activation_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings: checkpointed layers need an input with grad
        if args.ddp_find_unused_parameters is None:
            # Trainer searches the graph for unused parameters on every forward of a PeftModel; every LoRA
            # parameter is used by both of SOREB's passes (and every example has an image), so skip the search
            args.ddp_find_unused_parameters = False
        for name in ("image", "narrative", "evaluation", "expert_scores"):
            if train_dataset is not None and name not in train_dataset.column_names:
                raise ValueError(f"train_dataset: missing column {name!r} (columns: {train_dataset.column_names})")
        if reward_funcs is None:
            reward_funcs = [ScoreAlignmentReward(llm_client=self._llm_parser(args))]
        self.reward_funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        tokenizer = processing_class.tokenizer
        # top_k=0 turns top-k off as TRL's trainers do: None would be filled with transformers' default (50), and
        # the sample would no longer follow the full-softmax distribution whose log-probabilities L_RL uses
        self.generation_config = GenerationConfig(
            max_new_tokens=args.max_completion_length, do_sample=True, temperature=args.temperature,
            top_p=args.top_p, top_k=args.top_k if args.top_k is not None else 0, pad_token_id=tokenizer.pad_token_id,
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
        self._dist = DistributedBackend(self.accelerator)
        if self._dist.is_fsdp:  # an Accelerator configured in code, not through the arguments or the launcher
            raise ValueError(FSDP_REFUSAL)

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
        mode = "train" if self.model.training else "eval"
        columns = {k: [f[k] for f in features] for k in features[0] if k != "image"}

        def log_metric(name: str, value: float) -> None:  # TRL's hook: a reward function's own scalars
            self._metrics[mode][name].append(float(value))

        per_func = [func(prompts=prompts, completions=completions, trainer_state=self.state, log_metric=log_metric,
                         **columns) for func in self.reward_funcs]
        for func, values in zip(self.reward_funcs, per_func, strict=True):  # as TRL: rewards/<name>/mean and std
            name = getattr(func, "__name__", type(func).__name__)
            present = [float(v) for v in values if v is not None]
            if present:
                self._metrics[mode][f"rewards/{name}/mean"].append(sum(present) / len(present))
                self._metrics[mode][f"rewards/{name}/std"].append(
                    float(torch.tensor(present).std()) if len(present) > 1 else 0.0)
        rewards: list[float | None] = []
        for values in zip(*per_func, strict=True):
            present = [v for v in values if v is not None]
            rewards.append(sum(present) if present else None)
        return rewards

    @contextmanager
    def _checkpointing_off(self) -> Iterator[None]:
        """Sample without activation checkpointing, then re-enable it with the user's settings.

        TRL's ``unwrap_model_for_generation`` re-enables it without ``activation_checkpointing_kwargs``,
        ``every_n_layers`` or ``offload`` (and ZeRO-3's reentrant setting); re-enabled here as Trainer enabled it.
        """
        model = self.accelerator.unwrap_model(self.model_wrapped)
        was_on = self.args.activation_checkpointing and bool(getattr(model, "is_activation_checkpointing", False))
        if was_on:
            model.activation_checkpointing_disable()
        try:
            yield
        finally:
            if was_on:
                kwargs = dict(self.args.activation_checkpointing_kwargs or {})
                every_n_layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None,
                                                      every_n_layers=every_n_layers, offload=offload)

    def _prepare_inputs(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        device = self.accelerator.device
        images = sampling_images(features)
        narratives = [f["narrative"] for f in features]
        prompts = prompt_batch(self.processing_class, images, narratives, self.prompt_fn).to(device)
        # every process takes part in each sampling step until all are done when the parameters are sharded
        synced = self._dist.is_zero3 and self.accelerator.num_processes > 1
        with torch.no_grad(), self._checkpointing_off(), unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
        ) as unwrapped:
            sequences = unwrapped.generate(**prompts, generation_config=self.generation_config, synced_gpus=synced)
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
                                    [f["evaluation"] for f in features], prompt_fn=self.prompt_fn).to(device)
        attention_mask = torch.cat([prompts["attention_mask"], completion_mask], dim=1)
        generated_mask = torch.cat([torch.zeros_like(prompts["attention_mask"]), completion_mask], dim=1)
        return {
            "rl": {
                "input_ids": sequences, "attention_mask": attention_mask, "pixel_values": prompts["pixel_values"],
                # positions as generation numbered them (left padding shifts them)
                "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0),
            },
            "generated_mask": generated_mask,
            "logits_to_keep": completion_ids.shape[1],
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
        if self.baseline.value is not None:  # none yet before the first reward: nothing to average, never NaN
            m["baseline"].append(self.baseline.value)
        lengths = completion_mask.sum(1).float()
        m["completions/mean_length"].append(float(lengths.mean()))
        m["completions/min_length"].append(float(lengths.min()))
        m["completions/max_length"].append(float(lengths.max()))
        # samples that ran into max_completion_length without their EOS: their score block may be cut off
        m["completions/clipped_ratio"].append(float(clipped.float().mean()))
        m["num_tokens"].append(float(completion_mask.sum()))
        if self.args.log_completions:
            for f, text, r, a in zip(features, texts, rewards, advantages, strict=True):
                self._completions.append({"narrative": f["narrative"], "completion": text, "reward": r,
                                          "advantage": a})

    # -- loss ---------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        # logits only where they count: the completion for L_RL, the label evaluation for L_TEXT
        token_logps = completion_logps(model, inputs["rl"], inputs["logits_to_keep"])
        rl_loss = policy_gradient_from_logps(token_logps, inputs["generated_mask"][:, -inputs["logits_to_keep"]:],
                                             inputs["advantages"], normalization=self.args.pg_normalization)
        if self.args.text_weight > 0:
            text_loss = label_loss(model, inputs["text"])
            loss = self.args.rl_weight * rl_loss + self.args.text_weight * text_loss
        else:  # the ablation without the text loss: skip its forward pass
            text_loss = torch.zeros((), device=rl_loss.device)
            loss = self.args.rl_weight * rl_loss
        self._metrics[mode]["loss/rl"].append(float(rl_loss.detach()))
        self._metrics[mode]["loss/text"].append(float(text_loss.detach()))
        return (loss, token_logps) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        # every process's metrics, not rank 0's alone (Trainer calls log on every process)
        local = {k: (float(sum(v)), len(v)) for k, v in self._metrics[mode].items() if v}
        metrics = _merge_metric_parts(gather_object([local]) if self.accelerator.num_processes > 1 else [local])
        clipped = metrics.get("completions/clipped_ratio", 0.0)
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
            # every sampled completion of the logging step, for reading later (as TRL logs its completions table)
            out = Path(self.args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            with open(out / COMPLETIONS_FILE, "a", encoding="utf-8") as fh:
                for x in c:
                    fh.write(json.dumps({"step": self.state.global_step, **x}) + "\n")
            if self.args.num_completions_to_print:  # a table on screen only when asked for
                nan = float("nan")
                print_prompt_completions_sample(
                    [x["narrative"] for x in c], [x["completion"] for x in c],
                    {"score_alignment": [nan if x["reward"] is None else x["reward"] for x in c]},
                    [nan if x["advantage"] is None else x["advantage"] for x in c],
                    self.state.global_step, self.args.num_completions_to_print,
                )
        self._completions = []
