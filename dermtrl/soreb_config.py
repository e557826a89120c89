"""Configuration of the SOREB trainer (Score-Oriented REINFORCE with an EMA Baseline, paper Section 3.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl.trainer.base_config import _BaseConfig


@dataclass
class SOREBConfig(_BaseConfig):
    r"""
    Configuration for [`SOREBTrainer`]: one sampled evaluation per example, a score-alignment reward, an EMA
    baseline and a policy gradient on the generated tokens, plus the cross-entropy on the label evaluation y*.

    Parameters:
        max_completion_length (`int`, defaults to `256`): maximum tokens of the sampled evaluation.
        temperature (`float`, defaults to `1.0`): sampling temperature of the single sample per example.
        top_p (`float`, defaults to `1.0`), top_k (`int`, *optional*): nucleus / top-k sampling.
        beta (`float`, defaults to `0.9`): EMA momentum of the baseline, eq. 3 (`b <- beta*b + (1-beta)*r`).
        baseline_init (`float`, *optional*): initial baseline; `None` starts it at the first batch's mean reward.
        rl_weight (`float`, defaults to `0.5`): lambda_RL of eq. 5.
        text_weight (`float`, defaults to `1.0`): lambda_TEXT of eq. 5.
        llm_parser_base_url / llm_parser_model / llm_parser_api_key_env: when a model is named, the LLM parser of
            Figure 4 fills the scores the rule-based parser misses (through the project's OpenAI-compatible client).
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
    llm_parser_base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible endpoint of the LLM score parser (Figure 4)."}
    )
    llm_parser_model: str | None = field(
        default=None, metadata={"help": "Model of the LLM score parser; None uses the rule-based parser only."}
    )
    llm_parser_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Name of the environment variable holding the parser's key."}
    )
    log_completions: bool = field(default=True, metadata={"help": "Log a table of sampled completions."})
    num_completions_to_print: int = field(default=2, metadata={"help": "Completions per log step in the table."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.beta < 1.0:
            raise ValueError(f"beta must be in (0, 1) (paper eq. 3), got {self.beta}")
        if self.rl_weight <= 0 or self.text_weight <= 0:
            raise ValueError(
                f"rl_weight and text_weight must be > 0 (paper eq. 5), got {self.rl_weight} and {self.text_weight}"
            )
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {self.max_completion_length}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
