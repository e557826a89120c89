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
from collections.abc import Iterable, Mapping, Sequence
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
from dermtrl.bench.release import Release, image_root_or_env, load_release
from dermtrl.bench.render import write_comparison, write_probe_report, write_report
from dermtrl.cases.splits import TEST_START
from dermtrl.llm.client import ClientConfig, LLMClient, Usage

if TYPE_CHECKING:
    from datasets import Dataset

    from dermtrl.bench.config import BenchConfig

__all__ = ["BenchCases", "BenchResult", "Candidates", "DermBench", "candidate_sets", "load_bench_cases",
           "read_candidate_file", "read_judgments", "run_config"]

#: ``{model: records or candidates JSONL path}``, a list of candidates JSONL paths, or one path.
Candidates = Mapping[str, Any] | Sequence[Any] | str | os.PathLike


def _records_of(name: str, value: Any) -> list[dict[str, Any]]:
    """One model's candidate records from a list of mappings; anything else is refused with the shape wanted."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"candidates of {name!r}: expected a list of records or a candidates JSONL path, got "
                         f"{type(value).__name__}")
    for i, r in enumerate(value):
        if not isinstance(r, Mapping):
            raise ValueError(f"candidates of {name!r}, item {i}: expected a record such as {{'case_id': 'case-0', "
                             f"'text': 'The image shows ...'}}, got {type(r).__name__} {str(r)[:40]!r} (a list of "
                             "narratives alone does not say which case each one answers)")
    return [_dermtrl_record(r) for r in value]


def _dermtrl_record(r: Mapping[str, Any]) -> dict[str, Any]:
    """A candidate record as the judge reads it; the official runner's shape (``id``, ``candidate_text``) too."""
    if "case_id" not in r and "id" in r and "candidate_text" in r:
        text = r["candidate_text"]
        return {"case_id": r["id"], "text": text, "model": r.get("model"),
                "error": None if isinstance(text, str) and text.strip() else "candidate_text is empty"}
    return dict(r)


def read_candidate_file(path: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """``{model: records}`` of one candidates JSONL: dermtrl's (``case_id``, ``text``) or the official runner's
    (``id``, ``candidate_text``, ``model``; it may hold several models)."""
    from dermtrl.bench.official import is_official_candidates, read_official_candidates

    if is_official_candidates(path):
        return read_official_candidates(path)
    name, records = read_candidates(path)
    return {name: records}


def candidate_sets(candidates: Any) -> dict[str, list[dict[str, Any]]]:
    """``{model: records}`` from a mapping (model -> records or JSONL path), a list of JSONL paths, or one path.

    A JSONL path may hold dermtrl's candidates or the official runner's; a path under a model name in a mapping
    gives that model's records (the file's own model, or the one of that name when the file holds several).
    """
    if isinstance(candidates, (str, os.PathLike)):
        candidates = [candidates]
    sets: dict[str, list[dict[str, Any]]] = {}
    if isinstance(candidates, Mapping):
        for name, value in candidates.items():
            if isinstance(value, (str, os.PathLike)):
                found = read_candidate_file(value)
                if len(found) > 1 and str(name) not in found:
                    raise ValueError(f"{value}: holds models {', '.join(sorted(found))}, none named {name!r}")
                records = found[str(name)] if len(found) > 1 else next(iter(found.values()))
                sets[str(name)] = [{**r, "model": str(name)} for r in records]
            else:
                sets[str(name)] = _records_of(str(name), value)
        return sets
    if isinstance(candidates, (bytes, Mapping)) or not isinstance(candidates, Iterable):
        raise ValueError(f"candidates: expected {{model: records or path}} or candidates JSONL paths, got "
                         f"{type(candidates).__name__}")
    for path in candidates:
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"candidates: expected candidates JSONL paths (or {{model: records}}), got "
                             f"{type(path).__name__}")
        if not Path(path).is_file():
            raise ValueError(f"candidates: {str(path)[:80]!r} is not a candidates file (to judge narratives you "
                             "hold in memory, pass {model: [{'case_id': ..., 'text': ...}, ...]})")
        for name, records in read_candidate_file(path).items():
            if name in sets:
                raise ValueError(f"{path}: model {name!r} already comes from another candidates file")
            sets[name] = records
    return sets


def _check_images(cases: Any) -> None:
    """Generation needs images: a release loaded without an image root has none, and says how to give them."""
    if isinstance(cases, Sequence) and cases and all(isinstance(r, Mapping) and "dermnet_image_path" in r
                                                     and r.get("image") is None for r in cases):
        raise ValueError("generating candidates needs the DermNet images, which the release does not include: give "
                         "image_root (--image-root) or set $DERMNET_TEST_ROOT to the root of your copy (judging "
                         "existing candidates works without them)")


@dataclass
class BenchCases:
    """The cases of a run and where they came from: a dataset, or the release (with what its checks found)."""

    cases: Any
    release: Release | None = None
    excluded: list[dict[str, Any]] = field(default_factory=list)  # flagged references left out (exclude_flagged)
    notes: list[str] = field(default_factory=list)

    def without_excluded(self, sets: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        """Candidate sets without the excluded cases (left out of the run, not counted as failures)."""
        gone = {e["case_id"] for e in self.excluded}
        return {m: [dict(r) for r in records if str(r.get("case_id")) not in gone] for m, records in sets.items()}


def load_bench_cases(source: str, split: str = "test", *, n: int | None = None, seed: int = 0, start: int = TEST_START,
                     image_root: str | os.PathLike[str] | None = None, exclude_flagged: bool = False) -> BenchCases:
    """The cases of ``source``: a checkout of the DermBench release (or its ``data/`` folder), with the images under
    ``image_root`` (default ``$DERMNET_TEST_ROOT``; none: text only), or anything
    :func:`dermtrl.cases.loading.load_cases` reads. ``n`` takes the first n cases. ``exclude_flagged`` leaves out
    the references :func:`dermtrl.bench.audit.audit_release`'s rule pass flags (release only)."""
    from dermtrl.bench.release import find_release

    if find_release(source) is None:
        if image_root:
            raise ValueError(f"image_root applies to the DermBench release; {source!r} is not a checkout of it")
        if exclude_flagged:
            raise ValueError(f"exclude_flagged applies to the DermBench release; {source!r} is not a checkout of it")
        from dermtrl.cases.loading import load_cases

        return BenchCases(load_cases(source, split, n=n, seed=seed, start=start))
    release = load_release(source)
    notes = [release.summary(), *release.problems]
    rows = release.rows(image_root_or_env(image_root))
    if n is not None:
        rows = rows[:n]
    excluded: list[dict[str, Any]] = []
    if exclude_flagged:
        from dermtrl.bench.audit import audit_rows

        flags = audit_rows(rows, sha_mismatch=set(release.sha_mismatch))
        flagged = {f.case_id for f in flags}
        excluded = [{"case_id": f.case_id, "reasons": f.reasons} for f in flags]
        rows = [r for r in rows if r["case_id"] not in flagged]
        notes.append(f"excluded {len(flagged)} flagged reference(s) of {len(rows) + len(flagged)} "
                     "(exclude_flagged; `dermtrl bench audit` lists them with the reason)")
    return BenchCases(rows, release=release, excluded=excluded, notes=notes)


class DermBench:
    """The DermBench protocol around one judge endpoint (``judge``: its client settings, or a client).

    ``parse_retries``: how often a judge answer that misses a score is re-asked before the case is recorded
    as failed. ``progress``: rich progress bars on stderr.
    """

    def __init__(self, judge: ClientConfig | LLMClient, *, parse_retries: int | None = None, progress: bool = True,
                 protocol: str = "paper", release: Release | str | os.PathLike[str] | None = None) -> None:
        from dermtrl.bench.official import PROTOCOLS, OfficialJudge, official_response_format

        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if release is not None and not isinstance(release, Release):
            release = load_release(release)
        if protocol == "official" and release is None:
            raise ValueError("protocol 'official' reads its prompts from a checkout of the DermBench release "
                             "(yuhos16/DermBench): give the checkout as the dataset (Python: release=PATH)")
        self.protocol = protocol
        self.release = release
        if protocol == "official" and isinstance(judge, ClientConfig):
            judge = official_response_format(judge)
            if (judge.base_url or "").startswith("https://") and not os.environ.get(judge.api_key_env):
                raise ValueError(f"judge {judge.model} at {judge.base_url}: set the environment variable "
                                 f"{judge.api_key_env} to your API key (or point base_url at a local server)")
        self.client = judge if isinstance(judge, LLMClient) else LLMClient(judge)
        self._owns_client = not isinstance(judge, LLMClient)
        if protocol == "official":
            assert release is not None
            self.llm_judge: Judge = OfficialJudge(self.client, release.prompt("judge"),
                                                  parse_retries=1 if parse_retries is None else parse_retries)
        else:
            self.llm_judge = Judge(self.client, parse_retries=2 if parse_retries is None else parse_retries)
        self.progress = progress

    @property
    def instruction(self) -> str | None:
        """The candidate prompt of this protocol (``None``: the paper's, dermtrl's own)."""
        return self.release.prompt("candidate") if self.protocol == "official" and self.release else None

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
            generator: Generator = OpenAIGenerator(model, instruction=self.instruction)
        elif isinstance(model, str):
            generator = TransformersGenerator(model, instruction=self.instruction, **local)
        else:
            generator = model
            if self.instruction is not None and generator.instruction != self.instruction:
                raise ValueError(f"protocol 'official': the generator for {generator.name!r} was built with "
                                 "another prompt; build it with instruction=bench.instruction")
        _check_images(cases)
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
    out = Path(config.out)
    d = config.dataset
    loaded = load_bench_cases(d.source, d.split, n=d.n, seed=d.seed, start=d.start, image_root=d.image_root,
                              exclude_flagged=config.exclude_flagged)
    ds = loaded.cases
    sets: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = list(loaded.notes)
    with DermBench(config.judge, parse_retries=config.parse_retries, progress=progress, protocol=config.protocol,
                   release=loaded.release) as bench:
        for spec in config.candidates:
            if spec.column is not None:
                sets[spec.name] = candidates_from_dataset(ds, spec.column, expert_scores=spec.expert_scores)
                continue
            if spec.file is not None:
                sets[spec.name] = candidate_sets({spec.name: spec.file})[spec.name]
                continue
            model: ClientConfig | Generator = (
                spec.client if spec.client is not None else TransformersGenerator(
                    spec.local or "", batch_size=spec.batch_size, max_new_tokens=spec.max_new_tokens,
                    temperature=spec.temperature, device=spec.device, dtype=spec.dtype,
                    instruction=bench.instruction)
            )
            try:
                sets[spec.name] = bench.generate(ds, model, out / "candidates" / f"{spec.name}.jsonl",
                                                 name=spec.name, overwrite=overwrite, retry_failed=retry_failed,
                                                 notes=notes)
            finally:
                if isinstance(model, TransformersGenerator):
                    model.close()
        sets = loaded.without_excluded(sets)
        records = bench.judge(ds, sets, out / "judgments.jsonl", overwrite=overwrite, retry_failed=retry_failed)
        board = build_leaderboard(records, n_bootstrap=config.report.n_bootstrap, seed=config.report.seed,
                                  ci=config.report.ci, by=config.report.by)
        if loaded.excluded:
            import json

            out.mkdir(parents=True, exist_ok=True)
            (out / "excluded_references.jsonl").write_text(
                "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in loaded.excluded), encoding="utf-8")
        paths = write_report(board, out / "report", notes=loaded.notes)
        from dermtrl.bench.official import write_official_scores

        paths["official_scores"] = write_official_scores(records, out / "judgments.official.jsonl",
                                                         judge_model=bench.client.config.model)
        comparison = None
        dermeval_records: list[dict[str, Any]] = []
        if config.evaluators is not None and config.evaluators.dermeval is not None:
            comparison, dermeval_records = _dermeval_half(config, ds, sets, records, out, overwrite=overwrite,
                                                          progress=progress)
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
              "judgments": sum(1 for r in records if r.get("error")),
              "dermeval": sum(1 for r in dermeval_records if r.get("error"))}
    totals = {"candidates": sum(len(records_) for records_ in sets.values()), "judgments": len(records),
              "dermeval": len(dermeval_records)}
    return BenchResult(leaderboard=board, probes=probes, paths=paths, usage=usage, comparison=comparison,
                       failed=failed, totals=totals, notes=notes)


def _dermeval_half(config: BenchConfig, ds: Any, sets: Mapping[str, Any], judged: list[dict[str, Any]], out: Path,
                   *, overwrite: bool, progress: bool) -> tuple[EvaluatorComparison, list[dict[str, Any]]]:
    """Score every candidate with DermEval (``dermeval.jsonl``) and compare it with the judge's records."""
    from dermtrl.bench.dermeval_scoring import load_dermeval, score_candidates

    spec = config.evaluators.dermeval
    evaluator = load_dermeval(spec.adapter, spec.base, batch_size=spec.batch_size,
                              max_new_tokens=spec.max_new_tokens, device=spec.device, dtype=spec.dtype)
    records = score_candidates(ds, sets, evaluator, out / "dermeval.jsonl", overwrite=overwrite, progress=progress)
    return compare_evaluators(judged, records, n_bootstrap=config.report.n_bootstrap, seed=config.report.seed,
                              ci=config.report.ci), records
