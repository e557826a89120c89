"""Configuration of the SOREB trainer (Score-Oriented REINFORCE with an EMA Baseline, paper Section 3.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl.trainer.base_config import _BaseConfig


@dataclass
class SOREBConfig(_BaseConfig):
    r"""
    Configuration class for the [`SOREBTrainer`].

    SOREB (Score-Oriented REINFORCE with an EMA Baseline, paper Section 3.3) draws one evaluation per example,
    rewards it by the negative MSE between its parsed scores and the expert scores, subtracts an EMA baseline, and
    adds the policy gradient on the generated tokens to the cross-entropy on the label evaluation y* (eq. 5).
    Only the parameters specific to SOREB are listed here; for the others, see
    [`~transformers.TrainingArguments`].

    Parameters:
        > Parameters that control the model

        model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments for `AutoModelForImageTextToText.from_pretrained`, used when the `model` argument of
            the [`SOREBTrainer`] is a string (a Hub id or a folder).

        > Parameters that control generation

        max_completion_length (`int`, *optional*, defaults to `256`):
            Maximum number of tokens of the sampled evaluation. A sample that hits it is counted in
            `completions/clipped_ratio`, and the trainer warns above 5%.
        temperature (`float`, *optional*, defaults to `1.0`):
            Temperature of the one sample per example (the paper gives none: 1.0 samples the model's own
            distribution, as REINFORCE assumes).
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling probability.
        top_k (`int`, *optional*, defaults to `0`):
            Top-k sampling; `0` disables it (as in TRL's trainers), so the sample follows the model's own
            distribution, the one whose log-probabilities L_RL uses. `None` is read as `0`: transformers would
            otherwise fill it with its global default, 50.
        ds3_gather_for_generation (`bool`, *optional*, defaults to `True`):
            Under DeepSpeed ZeRO-3, gather the full model on every process for sampling (fast). `False` samples
            with the parameters left sharded (slower, but the model never has to fit on one GPU), as TRL's
            option of the same name.

        > Parameters that control the training

        beta (`float`, *optional*, defaults to `0.9`):
            EMA momentum of the reward baseline, eq. 3: `b <- beta * b + (1 - beta) * r`.
        baseline_init (`float`, *optional*):
            Initial baseline. `None` starts it at the mean reward of the first batch that has one.
        use_baseline (`bool`, *optional*, defaults to `True`):
            Subtract the baseline. `False` is the ablation b = 0 (adv = r, plain REINFORCE).
        advantage_scaling (`str`, *optional*, defaults to `"none"`):
            `"none"` is the paper's adv = r - b. `"running_std"` (not in the paper, an option for diagnosis)
            divides adv by an EMA (momentum `beta`) of the standard deviation of r - b.
        pg_normalization (`str`, *optional*, defaults to `"sequence"`):
            `"sequence"` is eq. 4: the mean over each sample's generated tokens, then the batch mean. `"token"`
            (not in the paper) is one mean over every generated token of the batch.
        rl_weight (`float`, *optional*, defaults to `0.5`):
            lambda_RL of eq. 5, the weight of the policy-gradient loss.
        text_weight (`float`, *optional*, defaults to `1.0`):
            lambda_TEXT of eq. 5, the weight of the cross-entropy on y*. The paper requires > 0; 0 is accepted
            only as an ablation (SOREB without the text loss).

        > Parameters that control the LLM parser (Figure 4; the fields of `dermtrl.llm.client.ClientConfig`)

        llm_parser_base_url (`str`, *optional*):
            OpenAI-compatible endpoint of the LLM parser; `None` is the OpenAI API.
        llm_parser_model (`str`, *optional*):
            Model of the LLM parser, which fills the scores the rule-based parser misses. `None` uses the
            rule-based parser only.
        llm_parser_api_key_env (`str`, *optional*, defaults to `"OPENAI_API_KEY"`):
            Name of the environment variable that holds the parser's API key (never the key itself).
        llm_parser_max_concurrency (`int`, *optional*, defaults to `8`):
            Parser requests in flight at once.
        llm_parser_max_retries (`int`, *optional*, defaults to `5`):
            Retries per parser request on transient errors.
        llm_parser_timeout (`float`, *optional*, defaults to `120.0`):
            Seconds per parser request.
        llm_parser_max_tokens (`int`, *optional*, defaults to `1024`):
            Length cap of the parser's answer.
        llm_parser_cache_path (`str`, *optional*):
            SQLite response cache of the parser; `None` caches nothing.
        llm_parser_response_format (`str`, *optional*):
            `"scores"` asks the parser for the six scores as JSON (structured output).

        > Parameters that control the logging

        log_completions (`bool`, *optional*, defaults to `True`):
            Whether to append every sampled completion (step, narrative, completion, reward, advantage) to
            `completions.jsonl` in `output_dir` at each logging step.
        num_completions_to_print (`int`, *optional*, defaults to `0`):
            Number of those completions also printed as a table at each logging step (0: none).

    Choices the paper leaves open, and what SOREB does:

    - **Update, then advantage.** Eq. 3 is applied as written: b is updated first, then adv = r - b with the
      updated b. Rewards within a batch (gathered from every process under data parallelism) are folded in one at
      a time, in a fixed order. Evaluation (`prediction_step`) reads the baseline but never moves it.
    - **K = 0.** When no score parses, the example has no reward: no RL term, it does not enter the baseline and is
      counted in `no_reward_fraction`; its text loss still applies. It is never given a reward of 0.
    - **Sampling.** Top-k is off (`top_k=0`), so with the default temperature and top-p the sample follows the
      model's own distribution, the one L_RL differentiates. The `<image>` token is never sampled. The model
      stays in training mode, so LoRA dropout is active both while sampling and in the teacher-forced pass, as in
      TRL's GRPO with `disable_dropout=False`.
    - **What trains.** The paper trains LoRA only; the recipes' `train_projector` option also trains the
      multimodal projector in full, as LLaVA-1.5's own LoRA recipe does (Stage 2 inherits Stage 1's choice).
    """

    model_init_kwargs: dict | None = field(
        default=None,
        metadata={"help": "Keyword arguments for from_pretrained when the trainer's model is a string."},
    )
    max_completion_length: int = field(default=256, metadata={"help": "Maximum new tokens of the sampled evaluation."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the one sample per example."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling probability."})
    top_k: int | None = field(default=0, metadata={"help": "Top-k sampling; 0 disables it (None is read as 0)."})
    ds3_gather_for_generation: bool = field(
        default=True,
        metadata={"help": "ZeRO-3: gather the full model for sampling (False: sample sharded, slower, less memory)."},
    )
    beta: float = field(default=0.9, metadata={"help": "EMA momentum of the reward baseline (eq. 3)."})
    baseline_init: float | None = field(
        default=None, metadata={"help": "Initial baseline; None starts it at the first batch's mean reward."}
    )
    rl_weight: float = field(default=0.5, metadata={"help": "Weight lambda_RL of the REINFORCE loss (eq. 5)."})
    text_weight: float = field(default=1.0, metadata={"help": "Weight lambda_TEXT of the text loss (eq. 5)."})
    use_baseline: bool = field(
        default=True, metadata={"help": "Subtract the EMA baseline (eq. 3); False is the b = 0 ablation."}
    )
    advantage_scaling: str = field(
        default="none",
        metadata={"help": "'none' (paper: adv = r - b) or 'running_std' (adv / EMA std of r - b; not in the paper)."},
    )
    pg_normalization: str = field(
        default="sequence",
        metadata={"help": "'sequence' (paper eq. 4: mean over each sample's tokens) or 'token' (mean over all)."},
    )
    llm_parser_base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible endpoint of the LLM score parser (Figure 4)."}
    )
    llm_parser_model: str | None = field(
        default=None, metadata={"help": "Model of the LLM score parser; None uses the rule-based parser only."}
    )
    llm_parser_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Name of the environment variable holding the parser's key."}
    )
    llm_parser_max_concurrency: int = field(default=8, metadata={"help": "LLM parser: requests in flight at once."})
    llm_parser_max_retries: int = field(default=5, metadata={"help": "LLM parser: retries per request."})
    llm_parser_timeout: float = field(default=120.0, metadata={"help": "LLM parser: seconds per request."})
    llm_parser_max_tokens: int | None = field(default=1024, metadata={"help": "LLM parser: answer length cap."})
    llm_parser_cache_path: str | None = field(
        default=None, metadata={"help": "LLM parser: SQLite response cache (None: no cache)."}
    )
    llm_parser_response_format: str | None = field(
        default=None, metadata={"help": "LLM parser: 'scores' asks for the six scores as JSON (structured output)."}
    )
    log_completions: bool = field(default=True, metadata={"help": "Append every sampled completion to "
                                                                  "completions.jsonl in output_dir."})
    num_completions_to_print: int = field(default=0, metadata={"help": "Completions also printed as a table at each "
                                                                       "logging step (0: none)."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.beta < 1.0:
            raise ValueError(f"beta must be in (0, 1) (paper eq. 3), got {self.beta}")
        if self.rl_weight <= 0 or self.text_weight < 0:
            raise ValueError(
                f"rl_weight must be > 0 and text_weight >= 0 (paper eq. 5 uses both > 0; text_weight = 0 is the "
                f"ablation without the text loss), got {self.rl_weight} and {self.text_weight}"
            )
        if self.advantage_scaling not in ("none", "running_std"):
            raise ValueError(f"advantage_scaling must be 'none' or 'running_std', got {self.advantage_scaling!r}")
        if self.pg_normalization not in ("sequence", "token"):
            raise ValueError(f"pg_normalization must be 'sequence' or 'token', got {self.pg_normalization!r}")
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {self.max_completion_length}")
        if self.top_k is None:  # transformers would fill None with its global default (50); 0 turns top-k off
            self.top_k = 0
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables top-k), got {self.top_k}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
