"""The ``dermtrl bench run`` configuration: which cases, which candidate models, which judge, where to write.

A YAML file maps onto :class:`BenchConfig` (dataclasses, every field with a ``help``). Loading is strict: an
unknown or mistyped field raises :class:`ConfigError` naming the file and the field path (``candidates[1].
client.model``), before any model is loaded or any call is made. Configs name the *environment variable* of
an API key (``api_key_env``), never the key. Relative paths are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermtrl.cases.splits import TEST_START
from dermtrl.errors import DermtrlError
from dermtrl.llm.client import ClientConfig

__all__ = ["BenchConfig", "CandidateSpec", "ConfigError", "DatasetSpec", "DermEvalSpec", "EvaluatorsSpec", "ProbeSpec",
           "ReportSpec", "load_config"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConfigError(DermtrlError, ValueError):
    """A bad ``bench run`` config; the message names the file and the field."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data`` as keyword arguments for dataclass ``cls``; unknown keys raise naming ``where``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return dict(data)


def _client(data: Any, where: str) -> ClientConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of client settings, got {type(data).__name__}")
    if "model" not in data:  # no silent default model: say which one to call
        raise ConfigError(f"{where}.model: required field is missing")
    try:
        return ClientConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass
class DatasetSpec:
    """The cases: ``dermtrl:synthetic``, a ``save_to_disk`` folder, a data file or a Hub dataset id."""

    source: str = field(metadata={"help": "dermtrl:synthetic, a datasets folder, a jsonl/csv/parquet file or Hub id"})
    split: str = field(default="test", metadata={"help": "split to use when the source has several"})
    n: int | None = field(default=None, metadata={"help": "use the first n cases (synthetic: generate n)"})
    seed: int = field(default=0, metadata={"help": "synthetic cases: seed"})
    start: int = field(default=TEST_START, metadata={"help": "synthetic cases: first index (default: the test cases)"})
    image_root: str | None = field(
        default=None, metadata={"help": "DermBench release: root of your DermNet test images (default "
                                        "$DERMNET_TEST_ROOT; none: judging only)"})

    def check(self, where: str) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(f"{where}.source: must be a non-empty string, got {self.source!r}")
        if not isinstance(self.split, str) or not self.split:
            raise ConfigError(f"{where}.split: must be a non-empty string, got {self.split!r}")
        if self.n is not None and (not _is_int(self.n) or self.n < 1):
            raise ConfigError(f"{where}.n: must be an integer >= 1 or null, got {self.n!r}")
        for name in ("seed", "start"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: must be an integer >= 0, got {getattr(self, name)!r}")
        if self.image_root is not None and (not isinstance(self.image_root, str) or not self.image_root):
            raise ConfigError(f"{where}.image_root: must be a non-empty path string or null, got {self.image_root!r}")


@dataclass
class CandidateSpec:
    """One candidate model: exactly one of ``client`` (an OpenAI-compatible endpoint), ``local`` (a
    transformers model), ``column`` (narratives already in the dataset) or ``file`` (a candidates JSONL:
    dermtrl's ``case_id``/``text`` records or the official runner's ``id``/``candidate_text``/``model``)."""

    name: str = field(metadata={"help": "row label and file name (letters, digits, '.', '_', '-')"})
    client: ClientConfig | None = field(default=None, metadata={"help": "OpenAI-compatible endpoint settings"})
    local: str | None = field(default=None, metadata={"help": "transformers model: Hub id, folder or dermtrl:tiny"})
    column: str | None = field(default=None, metadata={"help": "dataset column holding ready-made narratives"})
    file: str | None = field(default=None, metadata={"help": "candidates JSONL holding ready-made narratives"})
    expert_scores: str | None = field(default=None, metadata={"help": "with column: the expert scores column"})
    batch_size: int = field(default=8, metadata={"help": "local: generation batch size"})
    max_new_tokens: int = field(default=512, metadata={"help": "local: new tokens per narrative"})
    temperature: float = field(default=0.0, metadata={"help": "local: sampling temperature (0: greedy)"})
    device: str | None = field(default=None, metadata={"help": "local: torch device (default cuda if available)"})
    dtype: str | None = field(default=None, metadata={"help": "local: torch dtype name, e.g. bfloat16"})

    @property
    def kind(self) -> str:
        return next(k for k in ("client", "local", "column", "file") if getattr(self, k) is not None)

    def check(self, where: str) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"{where}.name: must be letters, digits, '.', '_' or '-' (it names a file), "
                              f"got {self.name!r}")
        given = [k for k in ("client", "local", "column", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"{where}: give exactly one of client, local, column or file (got "
                              f"{', '.join(given) or 'none'})")
        for name in ("local", "column", "file", "expert_scores", "device", "dtype"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}.{name}: must be a non-empty string, got {value!r}")
        if self.file is not None and not Path(self.file).is_file():
            raise ConfigError(f"{where}.file: {self.file!r} is not a file (a candidates JSONL)")
        if self.expert_scores is not None and self.column is None:
            raise ConfigError(f"{where}.expert_scores: only applies with column (ready-made narratives)")
        for name in ("batch_size", "max_new_tokens"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        t = self.temperature
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= 2:
            raise ConfigError(f"{where}.temperature: must be a number in [0, 2], got {t!r}")


@dataclass
class ReportSpec:
    n_bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for CIs and rank stability"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    ci: float = field(default=0.95, metadata={"help": "confidence level"})
    by: str | None = field(default=None, metadata={"help": "slice each model's scores by this case column "
                                                         "(default: skin_tone when the data has it)"})

    def check(self, where: str) -> None:
        if not _is_int(self.n_bootstrap) or self.n_bootstrap < 0:
            raise ConfigError(f"{where}.n_bootstrap: must be an integer >= 0, got {self.n_bootstrap!r}")
        if not _is_int(self.seed):
            raise ConfigError(f"{where}.seed: must be an integer, got {self.seed!r}")
        if not isinstance(self.ci, float) or not 0 < self.ci < 1:
            raise ConfigError(f"{where}.ci: must be a number in (0, 1), got {self.ci!r}")
        if self.by is not None and (not isinstance(self.by, str) or not self.by.strip()):
            raise ConfigError(f"{where}.by: must be a column name, got {self.by!r}")


@dataclass
class ProbeSpec:
    kinds: list[str] = field(default_factory=lambda: ["injection", "length", "order"],
                             metadata={"help": "probes to run: injection, length, order"})
    n: int | None = field(default=None, metadata={"help": "probe the first n candidates of each model"})
    threshold: float = field(default=0.25, metadata={"help": "flag a mean shift of at least this many points"})

    def check(self, where: str) -> None:
        from dermtrl.bench.probes import PROBES

        if not isinstance(self.kinds, list) or not self.kinds or any(k not in PROBES for k in self.kinds):
            raise ConfigError(f"{where}.kinds: must be a non-empty list of {', '.join(PROBES)}, got {self.kinds!r}")
        if self.n is not None and (not _is_int(self.n) or self.n < 1):
            raise ConfigError(f"{where}.n: must be an integer >= 1 or null, got {self.n!r}")
        t = self.threshold
        if not isinstance(t, (int, float)) or isinstance(t, bool) or t < 0:
            raise ConfigError(f"{where}.threshold: must be a number >= 0, got {t!r}")


@dataclass
class DermEvalSpec:
    """DermEval as the second evaluator: reference-free scores for every candidate (Table 2's second half)."""

    adapter: str | None = field(default=None, metadata={"help": "DermEval LoRA adapter: a folder or Hub id"})
    base: str | None = field(default=None, metadata={"help": "base model (default: the adapter's own base)"})
    batch_size: int = field(default=8, metadata={"help": "evaluation batch size"})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "token budget (default: the one recorded beside the adapter)"})
    device: str | None = field(default=None, metadata={"help": "torch device (default cuda if available)"})
    dtype: str | None = field(default=None, metadata={"help": "torch dtype name, e.g. bfloat16"})

    def check(self, where: str) -> None:
        if self.adapter is None and self.base is None:
            raise ConfigError(f"{where}: give adapter (a DermEval adapter folder or Hub id) and/or base")
        for name in ("adapter", "base", "device", "dtype"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}.{name}: must be a non-empty string, got {value!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size: must be an integer >= 1, got {self.batch_size!r}")
        if self.max_new_tokens is not None and (not _is_int(self.max_new_tokens) or self.max_new_tokens < 1):
            raise ConfigError(f"{where}.max_new_tokens: must be an integer >= 1 or null, got {self.max_new_tokens!r}")


@dataclass
class EvaluatorsSpec:
    """Evaluators besides the DermBench judge (which always runs)."""

    dermeval: DermEvalSpec | None = field(default=None, metadata={"help": "score candidates with DermEval too"})


@dataclass
class BenchConfig:
    """A whole DermBench run: generate every candidate, judge them all, report (and optionally probe)."""

    out: str = field(metadata={"help": "output folder: candidates/, judgments.jsonl, report/, probes/"})
    dataset: DatasetSpec = field(metadata={"help": "the cases"})
    judge: ClientConfig = field(metadata={"help": "the judge's OpenAI-compatible endpoint (dermtrl.llm.client); "
                                                  "protocol official: defaults to deepseek-reasoner"})
    candidates: list[CandidateSpec] = field(metadata={"help": "the candidate models"})
    parse_retries: int | None = field(default=None, metadata={
        "help": "re-asks of a judge answer missing a score (default 2; protocol official: 1)"})
    protocol: str = field(default="paper", metadata={
        "help": "paper (dermtrl's prompts) or official (the release's prompts, read from the checkout)"})
    exclude_flagged: bool = field(default=False, metadata={
        "help": "DermBench release: leave out references the audit's rule pass flags"})
    report: ReportSpec = field(default_factory=ReportSpec, metadata={"help": "bootstrap settings"})
    probes: ProbeSpec | None = field(default=None, metadata={"help": "judge-robustness probes (optional)"})
    evaluators: EvaluatorsSpec | None = field(
        default=None, metadata={"help": "second evaluator (dermeval:) for Table 2's second half and Figure 6"})

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> BenchConfig:
        """Build and check a config from a mapping; :class:`ConfigError` names ``source`` and the field."""
        try:
            return cls._from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def _from_dict(cls, data: Any) -> BenchConfig:
        raw = dict(_fields(cls, data, "top level"))
        protocol = raw.get("protocol", "paper")
        if protocol not in ("paper", "official"):
            raise ConfigError(f"protocol: must be 'paper' or 'official', got {protocol!r}")
        if protocol == "official":  # the paper's judge unless the config says otherwise
            from dermtrl.bench.official import OFFICIAL_JUDGE

            judge_raw = raw.get("judge") or {}
            if not isinstance(judge_raw, Mapping):
                raise ConfigError(f"judge: expected a mapping of client settings, got {type(judge_raw).__name__}")
            raw["judge"] = {**OFFICIAL_JUDGE, **judge_raw}
        exclude_flagged = raw.get("exclude_flagged", False)
        if not isinstance(exclude_flagged, bool):
            raise ConfigError(f"exclude_flagged: must be true or false, got {exclude_flagged!r}")
        for name in ("out", "dataset", "judge", "candidates"):
            if name not in raw:
                raise ConfigError(f"{name}: required field is missing")
        if not isinstance(raw["out"], str) or not raw["out"]:
            raise ConfigError(f"out: must be a non-empty path string, got {raw['out']!r}")
        dataset = DatasetSpec(**_fields(DatasetSpec, raw["dataset"], "dataset")) if isinstance(
            raw["dataset"], Mapping) and "source" in raw["dataset"] else None
        if dataset is None:
            raise ConfigError("dataset.source: required field is missing")
        dataset.check("dataset")
        judge = _client(raw["judge"], "judge")
        entries = raw["candidates"]
        if not isinstance(entries, list) or not entries:
            raise ConfigError("candidates: must be a non-empty list")
        candidates = []
        for i, entry in enumerate(entries):
            where = f"candidates[{i}]"
            kwargs = _fields(CandidateSpec, entry, where)
            if "name" not in kwargs:
                raise ConfigError(f"{where}.name: required field is missing")
            if kwargs.get("client") is not None:
                kwargs["client"] = _client(kwargs["client"], f"{where}.client")
            spec = CandidateSpec(**kwargs)
            spec.check(where)
            candidates.append(spec)
        names = [c.name for c in candidates]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"candidates: the name(s) {', '.join(repeated)} are used twice")
        parse_retries = raw.get("parse_retries")
        if parse_retries is not None and (not _is_int(parse_retries) or parse_retries < 0):
            raise ConfigError(f"parse_retries: must be an integer >= 0, got {parse_retries!r}")
        report_data = dict(_fields(ReportSpec, raw.get("report") or {}, "report"))
        if _is_int(report_data.get("ci")):
            report_data["ci"] = float(report_data["ci"])
        report = ReportSpec(**report_data)
        report.check("report")
        probes = None
        if raw.get("probes") is not None:
            probes = ProbeSpec(**_fields(ProbeSpec, raw["probes"], "probes"))
            probes.check("probes")
        evaluators = None
        if raw.get("evaluators") is not None:
            kwargs = _fields(EvaluatorsSpec, raw["evaluators"], "evaluators")
            if kwargs.get("dermeval") is not None:
                spec = DermEvalSpec(**_fields(DermEvalSpec, kwargs["dermeval"], "evaluators.dermeval"))
                spec.check("evaluators.dermeval")
                kwargs["dermeval"] = spec
            evaluators = EvaluatorsSpec(**kwargs)
        if protocol == "official" and probes is not None and "order" in probes.kinds:
            raise ConfigError("probes.kinds: the order probe swaps dermtrl's prompt; protocol 'official' has one "
                              "fixed prompt (drop 'order' or use protocol 'paper')")
        return cls(out=raw["out"], dataset=dataset, judge=judge, candidates=candidates,
                   parse_retries=parse_retries, report=report, probes=probes, evaluators=evaluators,
                   protocol=protocol, exclude_flagged=exclude_flagged)


def load_config(path: str | Path) -> BenchConfig:
    """Read a YAML ``bench run`` config; a missing file, bad YAML or a bad field raises :class:`ConfigError`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return BenchConfig.from_dict(data, source=str(path))
