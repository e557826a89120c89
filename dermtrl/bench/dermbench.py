"""DermBench in one object (Section 3.2, Figure 3): generate candidates, judge them against certified
references, report the leaderboard, probe the judge.

    from dermtrl.bench import DermBench
    from dermtrl.llm.client import ClientConfig

    bench = DermBench(judge=ClientConfig(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-7B-Instruct",
                                         cache_path="runs/judge-cache.sqlite"))
    bench.generate(cases, "dermtrl:tiny", "runs/candidates/tiny.jsonl")
    records = bench.judge(cases, ["runs/candidates/tiny.jsonl"], "runs/judgments.jsonl")
    board = bench.report(records, "runs/report")

:func:`run_config` does all of it from a :class:`~dermtrl.bench.config.BenchConfig` (``dermtrl bench run``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dermtrl.bench.generate import (
    Generator,
    OpenAIGenerator,
    TransformersGenerator,
    candidates_from_dataset,
    generate_candidates,
    read_candidates,
)
from dermtrl.bench.judge import Judge, judge_items
from dermtrl.bench.leaderboard import EvaluatorComparison, Leaderboard, build_leaderboard, compare_evaluators
from dermtrl.bench.probes import PROBES, ProbeReport, run_probes
from dermtrl.bench.render import write_comparison, write_probe_report, write_report
from dermtrl.llm.client import ClientConfig, LLMClient, Usage

if TYPE_CHECKING:
    from datasets import Dataset

    from dermtrl.bench.config import BenchConfig

__all__ = ["BenchResult", "Candidates", "DermBench", "candidate_sets", "read_judgments", "run_config"]

#: ``{model: records or candidates JSONL path}``, a list of candidates JSONL paths, or one path.
Candidates = Mapping[str, Any] | Sequence[Any] | str | os.PathLike


def candidate_sets(candidates: Any) -> dict[str, list[dict[str, Any]]]:
    """``{model: records}`` from a mapping (model -> records or JSONL path), a list of JSONL paths, or one path."""
    if isinstance(candidates, (str, os.PathLike)):
        candidates = [candidates]
    sets: dict[str, list[dict[str, Any]]] = {}
    if isinstance(candidates, Mapping):
        for name, value in candidates.items():
            sets[str(name)] = (read_candidates(value)[1] if isinstance(value, (str, os.PathLike))
                               else [dict(r) for r in value])
        return sets
    for path in candidates:
        name, records = read_candidates(path)
        if name in sets:
            raise ValueError(f"{path}: model {name!r} already comes from another candidates file")
        sets[name] = records
    return sets


class DermBench:
    """The DermBench protocol around one judge endpoint (``judge``: its client settings, or a client).

    ``parse_retries``: how often a judge answer that misses a score is re-asked before the case is recorded
    as failed. ``progress``: rich progress bars on stderr.
    """

    def __init__(self, judge: ClientConfig | LLMClient, *, parse_retries: int = 2, progress: bool = True) -> None:
        self.client = judge if isinstance(judge, LLMClient) else LLMClient(judge)
        self._owns_client = not isinstance(judge, LLMClient)
        self.llm_judge = Judge(self.client, parse_retries=parse_retries)  #: the judge every call goes through
        self.progress = progress

    @property
    def usage(self) -> Usage:
        """The judge's calls, cache hits, failures and tokens so far."""
        return self.client.usage

    def generate(
        self,
        cases: Dataset | Sequence[Mapping[str, Any]],
        model: ClientConfig | str | Generator,
        out: str | os.PathLike[str],
        *,
        name: str | None = None,
        overwrite: bool = False,
        retry_failed: bool = False,
        notes: list[str] | None = None,
        **local: Any,
    ) -> list[dict[str, Any]]:
        """Candidates of one model for every case, into ``out`` (JSONL, resumable).

        ``model``: client settings of an OpenAI-compatible VLM, a transformers model name (``local`` are
        :class:`~dermtrl.bench.generate.TransformersGenerator` options: ``batch_size``, ``max_new_tokens``,
        ...), or a generator. ``retry_failed`` generates failed cases again; ``notes`` (a list) gets the
        endpoint client's retry and concurrency notes.
        """
        if isinstance(model, ClientConfig):
            generator: Generator = OpenAIGenerator(model)
        elif isinstance(model, str):
            generator = TransformersGenerator(model, **local)
        else:
            generator = model
        try:
            return generate_candidates(cases, generator, out, name=name, overwrite=overwrite, retry_failed=retry_failed,
                                       progress=self.progress)
        finally:
            if notes is not None and isinstance(generator, OpenAIGenerator):
                notes += [f"{generator.name}: {line}" for line in generator.client.notes()]
            if generator is not model:
                generator.close()

    def judge(
        self,
        cases: Dataset | Sequence[Mapping[str, Any]],
        candidates: Candidates,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        retry_failed: bool = False,
    ) -> list[dict[str, Any]]:
        """Judge every candidate against its case's certified reference; one record per (model, case) in
        ``out`` (JSONL, resumable). ``candidates``: ``{model: records or JSONL path}`` or JSONL paths."""
        items = judge_items(cases, candidate_sets(candidates))
        return self.llm_judge.run(items, out, overwrite=overwrite, retry_failed=retry_failed, progress=self.progress)

    @staticmethod
    def report(
        judgments: Sequence[Mapping[str, Any]] | str | os.PathLike[str],
        out_dir: str | os.PathLike[str] | None = None,
        *,
        n_bootstrap: int = 1000,
        seed: int = 0,
        ci: float = 0.95,
    ) -> Leaderboard:
        """The leaderboard of judge records (or a judgments JSONL); written under ``out_dir`` when given."""
        if isinstance(judgments, (str, os.PathLike)):
            judgments = read_judgments(judgments)
        board = build_leaderboard(judgments, n_bootstrap=n_bootstrap, seed=seed, ci=ci)
        if out_dir is not None:
            write_report(board, out_dir)
        return board

    def probe(
        self,
        cases: Dataset | Sequence[Mapping[str, Any]],
        candidates: Candidates,
        out_dir: str | os.PathLike[str],
        *,
        kinds: Sequence[str] = PROBES,
        n: int | None = None,
        threshold: float = 0.25,
        n_bootstrap: int = 1000,
        seed: int = 0,
        overwrite: bool = False,
    ) -> ProbeReport:
        """Run the judge-robustness probes on the first ``n`` candidates of each model; written under ``out_dir``."""
        sets = candidate_sets(candidates)
        if n is not None:
            sets = {m: records[:n] for m, records in sets.items()}
        items = judge_items(cases, sets)
        report = run_probes(self.llm_judge, items, out_dir, kinds=kinds, threshold=threshold, n_bootstrap=n_bootstrap,
                            seed=seed, overwrite=overwrite, progress=self.progress)
        write_probe_report(report, out_dir)
        return report

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> DermBench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_judgments(*paths: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of one or more judgments JSONL files (a torn last line is ignored)."""
    from dermtrl.jsonl import read_records

    records: list[dict[str, Any]] = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such judgments file")
        records += read_records(path)
    return records


@dataclass
class BenchResult:
    """What ``bench run`` produced: the leaderboard, the probe report (if asked for) and the files written."""

    leaderboard: Leaderboard
    probes: ProbeReport | None
    paths: dict[str, Path] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    comparison: EvaluatorComparison | None = None  # with evaluators.dermeval: both halves of Table 2, Figure 6
    failed: dict[str, int] = field(default_factory=dict)  # failed records: "candidates" and "judgments"
    totals: dict[str, int] = field(default_factory=dict)  # all records, the same keys
    notes: list[str] = field(default_factory=list)  # retries by kind, concurrency lowered, per client


def run_config(config: BenchConfig, *, overwrite: bool = False, retry_failed: bool = False,
               progress: bool = True) -> BenchResult:
    """Generate every candidate, judge them all, write the report (and the probes): ``dermtrl bench run``.

    Everything is resumable: rerun the same config after an interruption and only unfinished work is done;
    ``retry_failed`` also redoes failed candidates and failed judge calls (after the server came back).
    """
    from dermtrl.cases.loading import load_cases

    out = Path(config.out)
    ds = load_cases(config.dataset.source, config.dataset.split, n=config.dataset.n, seed=config.dataset.seed,
                    start=config.dataset.start)
    sets: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    with DermBench(config.judge, parse_retries=config.parse_retries, progress=progress) as bench:
        for spec in config.candidates:
            if spec.column is not None:
                sets[spec.name] = candidates_from_dataset(ds, spec.column, expert_scores=spec.expert_scores)
                continue
            model: ClientConfig | Generator = (
                spec.client if spec.client is not None else TransformersGenerator(
                    spec.local or "", batch_size=spec.batch_size, max_new_tokens=spec.max_new_tokens,
                    temperature=spec.temperature, device=spec.device, dtype=spec.dtype)
            )
            try:
                sets[spec.name] = bench.generate(ds, model, out / "candidates" / f"{spec.name}.jsonl",
                                                 name=spec.name, overwrite=overwrite, retry_failed=retry_failed,
                                                 notes=notes)
            finally:
                if isinstance(model, TransformersGenerator):
                    model.close()
        records = bench.judge(ds, sets, out / "judgments.jsonl", overwrite=overwrite, retry_failed=retry_failed)
        board = build_leaderboard(records, n_bootstrap=config.report.n_bootstrap, seed=config.report.seed,
                            ci=config.report.ci)
        paths = write_report(board, out / "report")
        comparison = None
        if config.evaluators is not None and config.evaluators.dermeval is not None:
            comparison = _dermeval_half(config, ds, sets, records, out, overwrite=overwrite, progress=progress)
            paths.update(write_comparison(comparison, out / "report"))
            paths.update({f"dermeval_{k}": v for k, v in write_report(comparison.dermeval,
                                                                      out / "report" / "dermeval").items()})
        probes = None
        if config.probes is not None:
            p = config.probes
            probes = bench.probe(ds, sets, out / "probes", kinds=p.kinds, n=p.n, threshold=p.threshold,
                                 n_bootstrap=config.report.n_bootstrap, seed=config.report.seed, overwrite=overwrite)
            paths.update({"probes_md": out / "probes" / "probes.md", "probes_json": out / "probes" / "probes.json"})
        usage = bench.usage.as_dict()
        notes += [f"judge: {line}" for line in bench.client.notes()]
    failed = {"candidates": sum(1 for records_ in sets.values() for r in records_ if r.get("error")),
              "judgments": sum(1 for r in records if r.get("error"))}
    totals = {"candidates": sum(len(records_) for records_ in sets.values()), "judgments": len(records)}
    return BenchResult(leaderboard=board, probes=probes, paths=paths, usage=usage, comparison=comparison,
                       failed=failed, totals=totals, notes=notes)


def _dermeval_half(config: BenchConfig, ds: Any, sets: Mapping[str, Any], judged: list[dict[str, Any]], out: Path,
                   *, overwrite: bool, progress: bool) -> EvaluatorComparison:
    """Score every candidate with DermEval (``dermeval.jsonl``) and compare it with the judge's records."""
    from dermtrl.bench.dermeval_scoring import load_dermeval, score_candidates

    spec = config.evaluators.dermeval
    evaluator = load_dermeval(spec.adapter, spec.base, batch_size=spec.batch_size,
                              max_new_tokens=spec.max_new_tokens, device=spec.device, dtype=spec.dtype)
    records = score_candidates(ds, sets, evaluator, out / "dermeval.jsonl", overwrite=overwrite, progress=progress)
    return compare_evaluators(judged, records, n_bootstrap=config.report.n_bootstrap, seed=config.report.seed,
                              ci=config.report.ci)
