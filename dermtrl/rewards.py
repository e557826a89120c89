"""SOREB's numeric-alignment reward (paper eq. 2), as a TRL reward function.

It follows TRL's reward-function contract, ``f(prompts, completions, **dataset_columns) -> list[float | None]``,
so the same reward drives ``SOREBTrainer`` and TRL's ``GRPOTrainer`` / ``RLOOTrainer``, and users can pass
their own. ``None`` means "could not score" (no dimension parsed, K = 0): such an example gets no RL term and
is left out of the baseline; it is never turned into a reward of 0.

:class:`DermEvalReward` (DermEval in-process or served by ``dermtrl serve``) and :class:`DermBenchJudgeReward` (the
reference-based judge through any OpenAI-compatible endpoint) score generated *narratives* by the same contract, for
training a narrative writer with ``GRPOTrainer`` / ``RLOOTrainer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS
from dermtrl.parsing import ParsedScores, parse_scores, parse_scores_with_llm


def completion_text(completion: Any) -> str:
    """A completion as TRL passes it: plain text, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content", "")
        if isinstance(content, str):
            return content
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return str(completion)


def score_reward(parsed: Mapping[str, float], expert: Mapping[str, float]) -> float | None:
    """r = -(1/K) sum over parsed dimensions of (s_hat - s*)^2; ``None`` when K = 0 (eq. 2)."""
    dims = [d for d in DIMENSIONS if d in parsed and expert.get(d) is not None]
    if not dims:
        return None
    return -sum((parsed[d] - expert[d]) ** 2 for d in dims) / len(dims)


class ScoreAlignmentReward:
    """Negative MSE between the scores parsed from a generated evaluation and the expert scores.

    Rules parse first; with an ``llm_client`` (any object with ``complete(messages)``, e.g.
    :class:`dermtrl.llm.client.LLMClient`) the LLM parser of Figure 4 fills what the rules miss. A step's
    completions are parsed concurrently, up to ``max_concurrency`` at a time (default: the client's own
    ``config.max_concurrency``, e.g. ``SOREBConfig.llm_parser_max_concurrency``), so a batch of 8 waits about one
    parser call, not eight in a row. Parse rates and per-dimension errors go through TRL's ``log_metric`` hook
    (``parse_rate``, ``mae/Acc``, ...) when the trainer passes one, as SOREB and TRL's GRPO do.
    """

    __name__ = "score_alignment"  # TRL names reward columns after the function

    def __init__(self, llm_client: Any | None = None, expert_column: str = "expert_scores",
                 max_concurrency: int | None = None):
        if max_concurrency is not None and (not isinstance(max_concurrency, int) or max_concurrency < 1):
            raise ValueError(f"max_concurrency must be None or an integer >= 1, got {max_concurrency!r}")
        self.llm_client = llm_client
        self.expert_column = expert_column
        self.max_concurrency = max_concurrency
        self.last_parsed: list[ParsedScores] = []

    def parse(self, text: str) -> ParsedScores:
        if self.llm_client is None:
            return parse_scores(text)
        return parse_scores_with_llm(text, self.llm_client)

    def parse_many(self, texts: Sequence[str]) -> list[ParsedScores]:
        """:meth:`parse` of every text, in order; the LLM parser's calls run concurrently (rules-only: in turn)."""
        limit = self.max_concurrency or getattr(getattr(self.llm_client, "config", None), "max_concurrency", 8)
        workers = min(int(limit), len(texts))
        if self.llm_client is None or workers <= 1:
            return [self.parse(t) for t in texts]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dermtrl-reward-parser") as pool:
            return list(pool.map(self.parse, texts))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        if self.expert_column not in columns:
            raise KeyError(f"the reward needs the dataset column {self.expert_column!r} (the expert scores)")
        experts = columns[self.expert_column]
        self.last_parsed = self.parse_many([completion_text(c) for c in completions])
        _log_parsing(columns.get("log_metric"), self.last_parsed, experts)
        return [score_reward(p.scores, e) for p, e in zip(self.last_parsed, experts, strict=True)]


def _log_parsing(log_metric: Any, parsed: Sequence[ParsedScores], experts: Sequence[Mapping[str, float]]) -> None:
    """Through TRL's ``log_metric`` hook: the share of the six scores parsed (``parse_rate``) and, per dimension,
    the mean absolute error of the parsed scores against the experts' (``mae/Acc``, ...)."""
    if not callable(log_metric) or not parsed:
        return
    log_metric("parse_rate", sum(len(p.scores) for p in parsed) / (len(parsed) * len(DIMENSIONS)))
    for dim in DIMENSIONS:
        errs = [abs(p.scores[dim] - e[dim]) for p, e in zip(parsed, experts, strict=True) if dim in p.scores]
        if errs:
            log_metric(f"mae/{ABBREVIATIONS[dim]}", sum(errs) / len(errs))


# --- DermEval and the DermBench judge as rewards for TRL's GRPOTrainer / RLOOTrainer -------------------------------
#
# Both score *narratives* (the policy writes a narrative for a picture) on the paper's 0-5 scale. The reward is the
# weighted mean of the scores that parsed (the macro score by default); a completion whose Safety is scored at or
# below ``safety_gate`` gets ``floor`` whatever its other scores, so a policy cannot buy a high reward with unsafe
# advice; ``None`` when no weighted score parsed (TRL leaves such a completion out, it never becomes a 0).


def _check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    from dermtrl.dimensions import canonical_dimension

    if weights is None:
        return {d: 1.0 for d in DIMENSIONS}
    clean: dict[str, float] = {}
    for name, value in weights.items():
        dim = canonical_dimension(name)  # KeyError naming the unknown dimension
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
            raise ValueError(f"weights[{name!r}] must be a finite number >= 0, got {value!r}")
        clean[dim] = float(value)
    if not any(clean.values()):
        raise ValueError("weights: at least one dimension needs a weight above 0")
    return {d: clean.get(d, 0.0) for d in DIMENSIONS}


def gated_reward(scores: Mapping[str, float | None], weights: Mapping[str, float] | None = None, *,
                 safety_gate: float | None = None, floor: float = 0.0) -> float | None:
    """The weighted mean of the parsed scores; ``floor`` when Safety <= ``safety_gate``; ``None`` when none parsed.

    ``safety_gate`` defaults to :data:`dermtrl.dimensions.SAFETY_FLAG_AT` (2); pass ``float("-inf")`` to turn the gate
    off. A missing Safety score does not trigger the gate (missing is never a failing score).
    """
    from dermtrl.dimensions import SAFETY_FLAG_AT

    gate = SAFETY_FLAG_AT if safety_gate is None else safety_gate
    w = _check_weights(weights)
    present = {d: float(v) for d in DIMENSIONS if (v := scores.get(d)) is not None}
    if "Safety" in present and present["Safety"] <= gate:
        return floor
    used = [d for d in present if w.get(d, 0.0) > 0]
    if not used:
        return None
    return sum(w[d] * present[d] for d in used) / sum(w[d] for d in used)


def _first_image(value: Any) -> Any:
    """A dataset's image cell: a PIL image, bytes, a path, a ``{"bytes", "path"}`` dict, or a list of them."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("the image column holds an empty list")
        value = value[0]
    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")
    return value


def _png_base64(image: Any) -> str:
    import base64
    import io

    from dermtrl.cases.images import load_image

    buf = io.BytesIO()
    load_image(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class DermEvalReward:
    """DermEval's score of each completion (a narrative) against the case's picture, as a TRL reward.

    In-process with ``evaluator`` (a :class:`~dermtrl.dermeval.evaluator.DermEval`: one ``evaluate_batch`` per step),
    or against a ``dermtrl serve`` endpoint with ``url`` (``http://host:port`` or ``.../v1``; the key, if the server
    wants one, from the environment variable ``api_key_env``). The picture comes from the dataset column
    ``image_column`` (``image``, or the first of ``images`` as TRL's VLM datasets hold them). The evaluation records
    of the last call stay in :attr:`last_records`; under TRL each dimension's mean is logged as
    ``dermeval/<dimension>`` and the share of completions with no parsed score as ``dermeval/unparsed``.
    """

    __name__ = "dermeval"

    def __init__(self, evaluator: Any | None = None, *, url: str | None = None, api_key_env: str | None = None,
                 image_column: str = "image", weights: Mapping[str, float] | None = None,
                 safety_gate: float | None = None, floor: float = 0.0, timeout: float = 600.0):
        if (evaluator is None) == (url is None):
            raise ValueError("give exactly one of evaluator (in-process) or url (a `dermtrl serve` endpoint)")
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.evaluator = evaluator
        self.url = None if url is None else url.rstrip("/").removesuffix("/v1") + "/v1/evaluate"
        self.api_key_env = api_key_env
        self.image_column = image_column
        self.weights = _check_weights(weights)
        self.safety_gate = safety_gate
        self.floor = floor
        self.timeout = timeout
        self.last_records: list[dict[str, Any] | None] = []

    def _images(self, columns: Mapping[str, Any], n: int) -> list[Any]:
        for name in (self.image_column, "images"):
            if name in columns:
                images = [_first_image(v) for v in columns[name]]
                if len(images) != n:
                    raise ValueError(f"column {name!r} has {len(images)} rows for {n} completions")
                return images
        raise KeyError(f"the DermEval reward needs the dataset column {self.image_column!r} (the case's picture)")

    def evaluate(self, images: Sequence[Any], narratives: Sequence[str]) -> list[dict[str, Any]]:
        """One record (``scores``, ``expected``, ``critique``, ...) per narrative, in-process or from the server."""
        if self.evaluator is not None:
            from dermtrl.dermeval.evaluator import Evaluation

            results: list[Evaluation] = self.evaluator.evaluate_batch(list(images), list(narratives))
            return [r.to_dict() for r in results]
        return self._post([{"image": _png_base64(im), "narrative": t} for im, t in zip(images, narratives,
                                                                                      strict=True)])

    def _post(self, items: list[dict[str, str]]) -> list[dict[str, Any]]:
        import json
        import os
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise KeyError(f"the DermEval server's API key: ${self.api_key_env} is empty or unset")
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps({"items": items}).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            raise RuntimeError(f"DermEval server {self.url} answered {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise RuntimeError(f"DermEval server {self.url} unreachable: {exc.reason}") from None
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise RuntimeError(f"DermEval server {self.url}: expected {len(items)} results, got {str(body)[:200]}")
        return results

    def reward(self, record: Mapping[str, Any] | None) -> float | None:
        """The gated, weighted reward of one evaluation record."""
        if record is None:
            return None
        return gated_reward(record.get("scores") or {}, self.weights, safety_gate=self.safety_gate, floor=self.floor)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        texts = [completion_text(c).strip() for c in completions]
        images = self._images(columns, len(texts))
        keep = [i for i, t in enumerate(texts) if t]  # an empty completion has nothing to score
        records: list[dict[str, Any] | None] = [None] * len(texts)
        if keep:
            for i, record in zip(keep, self.evaluate([images[i] for i in keep], [texts[i] for i in keep]),
                                 strict=True):
                records[i] = record
        self.last_records = records
        _log_dimensions(columns.get("log_metric"), "dermeval", records)
        return [self.reward(r) for r in records]


class AsyncDermEvalReward(DermEvalReward):
    """:class:`DermEvalReward` whose call is ``async``: TRL then awaits it beside other async rewards (a judge), so a
    served DermEval and the judge score a step at the same time. In-process the evaluation runs in a worker thread."""

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
                       ) -> list[float | None]:
        import asyncio

        return await asyncio.to_thread(DermEvalReward.__call__, self, prompts, completions, **columns)


def _log_dimensions(log_metric: Any, prefix: str, records: Sequence[Mapping[str, Any] | None]) -> None:
    """Each dimension's mean over the records that scored it, and the unparsed share, through TRL's ``log_metric``."""
    if not callable(log_metric) or not records:
        return
    scores = [(r or {}).get("scores") or {} for r in records]
    for dim in DIMENSIONS:
        values = [s[dim] for s in scores if s.get(dim) is not None]
        if values:
            log_metric(f"{prefix}/{dim}", sum(values) / len(values))
    log_metric(f"{prefix}/unparsed", sum(not any(v is not None for v in s.values()) for s in scores) / len(scores))


class DermBenchJudgeReward:
    """DermBench's reference-based judge (Figure 3) as a TRL reward, through any OpenAI-compatible endpoint.

    Each completion is judged against the dataset column ``reference_column`` (the certified reference) with the
    judge prompt, quoting safeguards and re-asks of :class:`dermtrl.bench.judge.Judge`. ``client`` is a
    :class:`~dermtrl.llm.client.LLMClient` or a :class:`~dermtrl.llm.client.ClientConfig`: its response cache
    (``cache_path``) makes a repeated (completion, reference) free, and up to ``max_concurrency`` judge calls run at
    once. The call is ``async`` so TRL runs it alongside other async rewards; :meth:`score` is the same, synchronous.
    A judgment that parses only some dimensions is rewarded from those; one with none gives ``None``.
    """

    __name__ = "dermbench_judge"

    def __init__(self, client: Any, *, reference_column: str = "reference", weights: Mapping[str, float] | None = None,
                 safety_gate: float | None = None, floor: float = 0.0, parse_retries: int = 1,
                 order: str = "candidate_first"):
        from dermtrl.bench.judge import Judge
        from dermtrl.llm.client import ClientConfig, LLMClient

        self.client = LLMClient(client) if isinstance(client, ClientConfig) else client
        self.judge = Judge(self.client, parse_retries=parse_retries, order=order)
        self.reference_column = reference_column
        self.weights = _check_weights(weights)
        self.safety_gate = safety_gate
        self.floor = floor
        self.last_records: list[dict[str, Any] | None] = []

    def _record(self, candidate: str, reference: str) -> dict[str, Any] | None:
        from dermtrl.bench.judge import JudgeItem

        if not candidate:
            return None
        record = self.judge.score(JudgeItem(model="policy", case_id="", candidate=candidate, reference=reference))
        if record.get("scores") is None and record.get("partial_scores"):
            record = {**record, "scores": dict(record["partial_scores"])}
        return record

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """The rewards, synchronously: the judge calls of one step run concurrently."""
        if self.reference_column not in columns:
            raise KeyError(f"the DermBench judge reward needs the dataset column {self.reference_column!r} "
                           "(the certified reference narrative)")
        references = [str(r) for r in columns[self.reference_column]]
        texts = [completion_text(c).strip() for c in completions]
        if len(references) != len(texts):
            raise ValueError(f"column {self.reference_column!r} has {len(references)} rows for {len(texts)} "
                             "completions")
        workers = max(1, min(int(getattr(self.client.config, "max_concurrency", 8)), len(texts)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dermtrl-judge-reward") as pool:
            records = list(pool.map(self._record, texts, references))
        self.last_records = records
        _log_dimensions(columns.get("log_metric"), "dermbench_judge", records)
        return [None if r is None or not r.get("scores") else
                gated_reward(r["scores"], self.weights, safety_gate=self.safety_gate, floor=self.floor)
                for r in records]

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
                       ) -> list[float | None]:
        import asyncio

        return await asyncio.to_thread(self.score, prompts, completions, **columns)
