"""Configuration of the SOREB trainer (Score-Oriented REINFORCE with an EMA Baseline, paper Section 3.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl.trainer.base_config import _BaseConfig


@dataclass
class SOREBConfig(_BaseConfig):
    r"""
    Configuration for [`SOREBTrainer`]: one sampled evaluation per example, a score-alignment reward, an EMA
    baseline and a policy gradient on the generated tokens, plus the cross-entropy on the label evaluation y*.

    > Choices the paper leaves open, and what SOREB does (each one a field below where it can be changed)

    - **Baseline start.** Eq. 3 does not say what b is before the first reward. `baseline_init=None` starts it at
      the mean reward of the first batch that has one (so early advantages are centred, not all negative: rewards
      are <= 0); a number starts it there. `use_baseline=False` is the b = 0 ablation.
    - **Update, then advantage.** Eq. 3 is applied as written: b <- beta*b + (1-beta)*r first, then adv = r - b
      with the updated b, so adv = beta * (r - b_previous). Rewards within a batch (gathered from every process
      under data parallelism) are folded in one at a time, in a fixed order. Evaluation (`prediction_step`) reads
      the baseline but never moves it.
    - **Mean over generated tokens.** Eq. 4's mean_{t in T} is taken per sequence over its own generated tokens
      (its EOS included, padding, prompt and image positions excluded), then averaged over the examples that
      have a reward (`pg_normalization="sequence"`); `"token"` is the alternative (one mean over all tokens).
    - **K = 0.** When no score parses, the example has no reward: no RL term, it does not enter the baseline and
      is counted in `no_reward_fraction`; its text loss still applies. It is never given a reward of 0.
    - **Sampling.** The paper gives no temperature or top-p for the one sample: `temperature=1.0`, `top_p=1.0`
      (the model's own distribution, what REINFORCE assumes), no top-k. The `<image>` token is never sampled.
    - **LoRA dropout while sampling.** The model stays in training mode, so LoRA dropout (0.05 in the paper) is
      active both while sampling and in the teacher-forced pass, as in TRL's GRPO with `disable_dropout=False`.
    - **Length.** `max_completion_length` caps the sample; a sample that hits it is counted in `clipped_ratio`
      and the trainer warns above 5% (the recipes record the label lengths in `label_lengths.json`).
    - **What trains.** The paper trains LoRA only; the recipes' `train_projector` option also trains the
      multimodal projector in full, as LLaVA-1.5's own LoRA recipe does (Stage 2 inherits Stage 1's choice).

    Parameters:
        max_completion_length (`int`, defaults to `256`): maximum tokens of the sampled evaluation.
        temperature (`float`, defaults to `1.0`): sampling temperature of the single sample per example.
        top_p (`float`, defaults to `1.0`), top_k (`int`, *optional*): nucleus / top-k sampling.
        beta (`float`, defaults to `0.9`): EMA momentum of the baseline, eq. 3 (`b <- beta*b + (1-beta)*r`).
        baseline_init (`float`, *optional*): initial baseline; `None` starts it at the first batch's mean reward.
        rl_weight (`float`, defaults to `0.5`): lambda_RL of eq. 5.
        text_weight (`float`, defaults to `1.0`): lambda_TEXT of eq. 5. The paper requires > 0; 0 is accepted
            only as an ablation (SOREB without the text loss).
        use_baseline (`bool`, defaults to `True`): `False` is the ablation b = 0 (adv = r, plain REINFORCE).
        advantage_scaling (`str`, defaults to `"none"`): `"none"` is the paper's adv = r - b; `"running_std"`
            (not in the paper, an option for diagnosis) divides adv by an EMA (momentum `beta`) of the reward's
            standard deviation around the baseline, so the policy-gradient scale no longer depends on the reward's.
        pg_normalization (`str`, defaults to `"sequence"`): `"sequence"` is eq. 4 (per-sequence mean over the
            generated tokens, then the batch mean); `"token"` sums adv * log p over every generated token of the
            batch and divides by their total count (long samples weigh more; not in the paper).
        llm_parser_base_url / llm_parser_model / llm_parser_api_key_env / llm_parser_max_concurrency /
            llm_parser_max_retries / llm_parser_timeout / llm_parser_max_tokens / llm_parser_cache_path /
            llm_parser_response_format: when a model is named, the LLM parser of Figure 4 fills the scores the
            rule-based parser misses, through the project's OpenAI-compatible client with these endpoint settings
            (the fields of `dermtrl.client.ClientConfig`, same defaults; `llm_parser_response_format: scores` asks
            for the scores as JSON).
        num_completions_to_print (`int`, defaults to `2`): sampled completions logged as a table at each log step.
        log_completions (`bool`, defaults to `True`): whether to log that table.
    """

    max_completion_length: int = field(default=256, metadata={"help": "Maximum new tokens of the sampled evaluation."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the one sample per example."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling probability."})
    top_k: int | None = field(default=None, metadata={"help": "Top-k sampling (None disables it)."})
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
    log_completions: bool = field(default=True, metadata={"help": "Log a table of sampled completions."})
    num_completions_to_print: int = field(default=2, metadata={"help": "Completions per log step in the table."})

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
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
