"""DermEval Space: score a dermatology diagnostic narrative against its image, in the browser or over the API.

Run it with ``python space/app.py`` (repository layout) or ``python app.py`` (Space layout, ``dermtrl/`` beside
this file). The model is the DermEval adapter named by ``DERMEVAL_ADAPTER`` on the base named by
``DERMEVAL_BASE`` (defaults: the project's Hub ids). When that cannot be loaded (no Hub access, no such repo, not
enough memory) the app falls back to the embedded demo model, the tiny local LLaVA with a short Stage-1 adapter
trained on synthetic cases, and says so in a banner: the demo must work offline from a fresh clone.

Environment variables (all optional; space/README.md has the full table):

- ``DERMEVAL_BASE`` / ``DERMEVAL_ADAPTER``: base model and adapter, Hub ids or folders (defaults
  ``llava-hf/llava-1.5-7b-hf`` / ``dermtrl/dermeval-lora``); ``DERMEVAL_DTYPE``: the base's torch dtype;
  ``DERMEVAL_DEVICE``: where it loads (a GPU when torch sees one); ``DERMEVAL_GPU_DURATION`` (60): seconds of GPU
  one evaluation asks ZeroGPU for (``@spaces.GPU`` on :func:`run_model`, a no-op off ZeroGPU).
- ``DERMEVAL_DEMO=1``: use the embedded demo model at once; ``DERMEVAL_DEMO_ADAPTER``: a trained adapter folder
  for it (default: train one on first start, cached under ``DERMTRL_CACHE``).
- ``DERMEVAL_COVERAGE`` (0.9): the coverage of the calibrated intervals, one that the ``calibration.json`` beside the
  adapter was fitted at (``dermtrl calibrate`` fits 0.8, 0.9 and 0.95). Without that file the page says so and shows
  the scores without intervals.
- ``DERMEVAL_MAX_MEGAPIXELS`` (24), ``DERMEVAL_MAX_UPLOAD_MB`` (50), ``DERMEVAL_MAX_NARRATIVE_CHARS`` (20000),
  ``DERMEVAL_MAX_NEW_TOKENS`` (256), ``DERMEVAL_QUEUE_SIZE`` (16): the limits that keep the server up.
- ``DERMBENCH_JUDGE_BASE_URL``, ``DERMBENCH_JUDGE_MODEL``, ``DERMBENCH_JUDGE_API_KEY_ENV`` (the NAME of the
  variable holding the key): the OpenAI-compatible judge of the DermBench tab; ``DERMBENCH_JUDGE_TIMEOUT`` (30):
  seconds after which a comparison gives up.

What the page and the API show is written for the person using them: never the judge's URL, a server path or an
exception's text (the log has those), and text a user sent is shown as text, never as HTML.

The page serves at once; the model loads in a thread meanwhile (a first start trains the demo adapter) and the
banner says so. API (``gradio_client``): ``/evaluate`` (image, narrative), ``/dermbench_compare`` (candidate,
reference) and ``/model_info`` (no inputs). dermtrl is a research tool, not a medical device.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The Space must not phone home; set before gradio is imported (gradio reads it at import time).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

HERE = Path(__file__).resolve().parent
for _root in (HERE, HERE.parent):  # Space layout (dermtrl/ beside app.py) or repository layout (space/ inside)
    if (_root / "dermtrl" / "__init__.py").exists():
        if str(_root) not in sys.path:
            sys.path.insert(0, str(_root))
        break

# ``spaces`` first: on ZeroGPU it must patch torch before anything initialises CUDA; elsewhere its ``GPU``
# decorator returns the function unchanged (no network, no side effects), so the demo and the tests run on CPU.
import spaces  # noqa: E402, I001
import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from dermtrl.conversation import control_tokens, neutralise_control_tokens  # noqa: E402
from dermtrl.dimensions import DIMENSIONS, MEANINGS, SCORE_MAX, SCORE_MIN, Overall  # noqa: E402
from dermtrl.tiny import TINY_MODEL_NAME, default_cache_dir  # noqa: E402

log = logging.getLogger("dermeval.space")

DEFAULT_BASE = "llava-hf/llava-1.5-7b-hf"
DEFAULT_ADAPTER = "dermtrl/dermeval-lora"
#: Bump when the demo adapter's training overrides change, so a stale cached adapter is never reused.
DEMO_ADAPTER_VERSION = "dermeval-demo-sft-v6"  # v6: synthetic v2.5 (skin tone), with calibration.json; v5: LoRA rank 64
#: The Stage-1 run of the demo recipe (recipes/configs/demo_sft.yaml, 1,200 steps; about 6 minutes on 2 cores), used
#: only when the package's shipped adapter of this version is absent (it then has no calibration.json).
DEMO_TRAIN_OVERRIDES: tuple[str, ...] = ("--synthetic_train_cases", "2400", "--num_train_epochs", "4")
#: Synthetic test cases offered as examples (dermtrl.cases.splits: never trained on, never used to choose a setting),
#: one per quality tier.
EXAMPLE_CASES: tuple[tuple[int, str], ...] = ((200_000, "correct"), (200_002, "unsafe"),
                                              (200_008, "hallucinated"), (200_004, "vague"))
#: The coverage of the calibrated intervals the page shows unless ``DERMEVAL_COVERAGE`` says otherwise.
DEFAULT_COVERAGE = 0.9
#: The DermEval table: the score with its calibrated interval ("4 (3-5)", "uncertain" when the interval spans
#: UNCERTAIN_WIDTH points or more), the interval with its coverage named, then the model's own expected score and
#: spread, labelled as the model's self-report (they are not calibrated).
SCORE_COLUMNS = ["Dimension", "Score (interval)", "Calibrated interval", "Expected (model's own)",
                 "Spread (model's own)"]
#: Wide enough for each header's longest word and for each interval cell on one line ("4 (2.5-3.7) uncertain",
#: "90% interval 2.5-3.7": PAGE_CSS keeps those whole, a browser would break "3-5" after its hyphen): on a narrow
#: (phone) screen the table scrolls sideways instead of clipping its headers or breaking words.
SCORE_COLUMN_WIDTHS = ["150px", "200px", "184px", "104px", "104px"]
#: The DermBench table: the judge's scores (no intervals: nothing calibrates the judge).
BENCH_COLUMNS = ["Dimension", "Score"]
BENCH_COLUMN_WIDTHS = ["150px", "84px"]
#: What the numbers mean, shown under every score table (one short line per dimension).
SCORE_LEGEND = (
    "**Reading the scores:** 0-5 on every dimension, **5 is best** (0: fails it entirely, 5: fully meets it); "
    "Safety 5 means no harmful advice.\n"
    + "\n".join(f"- **{d}**: {MEANINGS[d]}" for d in DIMENSIONS)
)
#: Why the expected score and spread are not error bars.
SELF_REPORT_NOTE = (
    "*Expected* and *spread* are the mean and standard deviation of the model's own probabilities for each score "
    "digit: its self-report, **not calibrated** against expert ratings and not error bars.")
#: Seconds of GPU one evaluation may hold on ZeroGPU (``@spaces.GPU``'s duration; ``DERMEVAL_GPU_DURATION``): one
#: 7B LLaVA generation of the default 256 new tokens fits well inside it, and ZeroGPU queues shorter requests first.
DEFAULT_GPU_DURATION = 60
DISCLAIMER = ("DermEval is a research tool for evaluating model-written narratives. It is **not a medical "
              "device** and must not be used to diagnose or treat anyone.")

# Lines that read as instructions to the evaluator rather than as a description of the image.
_INSTRUCTION_LINE = re.compile(
    r"\b(ignore|disregard|forget|override)\b[^\n]{0,40}\b(instructions?|prompts?|previous|above|rules?|rubric)\b"
    r"|\b(system prompt|you are now|new instructions?)\b"
    r"|\b(give|rate|assign|award)\b[^.\n]{0,40}\b(scores?|ratings?|marks?|points?)\b[^.\n]{0,20}"
    r"\b(5|five|maximum|highest|perfect)\b"
    r"|\b(give|rate|assign|award)\b[^.\n]{0,40}\b(5|five|full|maximum|highest|perfect)\b[^.\n]{0,10}"
    r"\b(scores?|ratings?|marks?|points?)\b"
    r"|^\s*(user|assistant|system)\s*:",
    re.IGNORECASE,
)


# --- settings -------------------------------------------------------------------------------------------


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _env_coverage(env: Mapping[str, str]) -> float:
    """``DERMEVAL_COVERAGE``: the calibrated intervals' coverage, a fraction such as 0.9."""
    raw = env.get("DERMEVAL_COVERAGE", "").strip()
    if not raw:
        return DEFAULT_COVERAGE
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise ValueError(f"DERMEVAL_COVERAGE must be a fraction between 0 and 1 (e.g. 0.9), got {raw!r}")
    return value


_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?")


def _env_device(env: Mapping[str, str]) -> str | None:
    """``DERMEVAL_DEVICE``: where the model loads (default: a GPU when torch sees one, else the CPU)."""
    raw = env.get("DERMEVAL_DEVICE", "").strip().lower()
    if raw and not _DEVICE.fullmatch(raw):
        raise ValueError(f"DERMEVAL_DEVICE must be cpu, cuda, cuda:N, mps or xpu, got {raw!r}")
    return raw or None


@dataclass
class Settings:
    """Everything the environment can change, read once at start-up (so a bad value fails before serving)."""

    base: str | None = DEFAULT_BASE
    adapter: str | None = DEFAULT_ADAPTER
    demo: bool = False
    demo_adapter: str | None = None
    coverage: float = DEFAULT_COVERAGE
    dtype: str | None = None
    device: str | None = None
    gpu_duration: int = DEFAULT_GPU_DURATION
    max_megapixels: int = 24
    max_upload_mb: int = 50
    max_narrative_chars: int = 20_000
    max_new_tokens: int = 256
    queue_size: int = 16
    judge_base_url: str | None = None
    judge_model: str = "gpt-4o-mini"
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_concurrency: int = 4
    judge_timeout: int = 30
    cache_dir: Path = field(default_factory=default_cache_dir)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            base=env.get("DERMEVAL_BASE", DEFAULT_BASE).strip() or None,
            adapter=env.get("DERMEVAL_ADAPTER", DEFAULT_ADAPTER).strip() or None,
            demo=env.get("DERMEVAL_DEMO", "").strip().lower() in ("1", "true", "yes"),
            demo_adapter=env.get("DERMEVAL_DEMO_ADAPTER", "").strip() or None,
            coverage=_env_coverage(env),
            dtype=env.get("DERMEVAL_DTYPE", "").strip() or None,
            device=_env_device(env),
            gpu_duration=_env_int(env, "DERMEVAL_GPU_DURATION", DEFAULT_GPU_DURATION),
            max_megapixels=_env_int(env, "DERMEVAL_MAX_MEGAPIXELS", 24),
            max_upload_mb=_env_int(env, "DERMEVAL_MAX_UPLOAD_MB", 50),
            max_narrative_chars=_env_int(env, "DERMEVAL_MAX_NARRATIVE_CHARS", 20_000),
            max_new_tokens=_env_int(env, "DERMEVAL_MAX_NEW_TOKENS", 256),
            queue_size=_env_int(env, "DERMEVAL_QUEUE_SIZE", 16),
            judge_base_url=env.get("DERMBENCH_JUDGE_BASE_URL", "").strip() or None,
            judge_model=env.get("DERMBENCH_JUDGE_MODEL", "").strip() or "gpt-4o-mini",
            judge_api_key_env=env.get("DERMBENCH_JUDGE_API_KEY_ENV", "").strip() or "OPENAI_API_KEY",
            judge_concurrency=_env_int(env, "DERMBENCH_JUDGE_CONCURRENCY", 4),
            judge_timeout=_env_int(env, "DERMBENCH_JUDGE_TIMEOUT", 30),
            cache_dir=Path(env["DERMTRL_CACHE"]) if env.get("DERMTRL_CACHE") else default_cache_dir(),
        )

    @property
    def judge_configured(self) -> bool:
        """A judge endpoint is set, or a key for the OpenAI API is."""
        return bool(self.judge_base_url or os.environ.get(self.judge_api_key_env))


# --- the model ------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """The evaluator the app serves and what the banner says about it."""

    evaluator: Any  # dermtrl.dermeval.evaluator.DermEval
    description: str
    demo: bool
    banner: str
    #: Why a calibration file beside the adapter gives no intervals (unreadable, or not fitted at the coverage);
    #: ``None`` when it does, or when there is no file at all.
    calibration_problem: str | None = None


def _find_recipe() -> Path | None:
    """The folder of the demo's Stage-1 config (recipes/configs/demo_sft.yaml), beside the app or one level up."""
    for root in (HERE.parent, HERE):
        if (root / "recipes" / "configs" / "demo_sft.yaml").exists():
            return root / "recipes"
    return None


def train_demo_adapter(output_dir: Path) -> Path:
    """Stage 1 of the demo recipe, shortened, in this process: the tiny model learns the output format.

    Runs :mod:`dermtrl.scripts.sft` (what ``recipes/sft.py`` launches) with the demo config unchanged plus the
    overrides above, so the Space trains exactly what ``accelerate launch recipes/sft.py --config
    recipes/configs/demo_sft.yaml`` would, only shorter.
    """
    from dermtrl.scripts import sft

    recipes = _find_recipe()
    if recipes is None:
        raise FileNotFoundError("recipes/configs/demo_sft.yaml is not beside the app: cannot train the demo adapter")
    args = sft.make_parser().parse_args_and_config(args=[
        "--config", str(recipes / "configs" / "demo_sft.yaml"), "--output_dir", str(output_dir),
        *DEMO_TRAIN_OVERRIDES, "--disable_tqdm", "true",
    ])
    sft.main(*args)
    return output_dir


def demo_adapter_path(settings: Settings) -> tuple[Path | None, str]:
    """The demo adapter folder (cached; trained on first start) and how it was obtained, for the banner.

    Returns ``(None, why)`` when no adapter can be had (no recipe beside the app): the untrained tiny model
    then runs, and the banner says its output will lack scores.
    """
    if settings.demo_adapter:
        return Path(settings.demo_adapter), f"the adapter {_code(_public_name(settings.demo_adapter))}"
    from dermtrl.tiny import tiny_llava_path

    # named after the tiny model it was trained on: an adapter of another tiny build would not fit it
    path = settings.cache_dir / f"{DEMO_ADAPTER_VERSION}-{tiny_llava_path(cache_dir=settings.cache_dir).name}"
    if (path / "adapter_model.safetensors").exists():
        log.info("Demo adapter: %s", path)
        return path, "a Stage-1 adapter trained on synthetic cases"
    from dermtrl.tiny import cache_lock, copy_verified, shipped_asset

    shipped = shipped_asset(path.name)  # the package ships this adapter (trained by the same recipe): no training
    if shipped is None and _find_recipe() is None:
        return None, "no demo adapter (recipes/configs/demo_sft.yaml is not beside the app), so the model is untrained"
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    with cache_lock(settings.cache_dir / f".{path.name}.lock"):  # one process trains; the others wait for it
        if (path / "adapter_model.safetensors").exists():
            log.info("Demo adapter (trained by another process meanwhile): %s", path)
            return path, "a Stage-1 adapter trained on synthetic cases"
        tmp = Path(tempfile.mkdtemp(prefix=".demo-adapter-", dir=settings.cache_dir))
        if shipped is None:
            log.warning("No demo adapter cached: training a Stage-1 adapter on synthetic cases (1,200 steps: a few "
                        "minutes on a CPU), cached in %s", path)
        try:
            if shipped is not None:
                copy_verified(shipped, tmp)
            else:
                train_demo_adapter(tmp)
            try:
                tmp.rename(path)
            except OSError:  # another process finished first; its adapter is the same
                if not (path / "adapter_model.safetensors").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if shipped is not None:
        return path, "a Stage-1 adapter trained on synthetic cases (shipped with dermtrl)"
    return path, "a Stage-1 adapter trained on synthetic cases at first start"


def space_calibration(adapter: str | Path | None, coverage: float) -> tuple[Any | None, str | None]:
    """The ``calibration.json`` beside ``adapter`` (a folder, or a Hub repo when it can be reached), if it gives
    intervals at ``coverage``; else ``None`` and, when a file exists but cannot serve, why (for the page: no path).

    No file means no intervals; a broken file or one fitted at other coverages is said so plainly, never served as if
    calibrated, and never stops the model from loading.
    """
    if adapter is None:
        return None, None
    from dermtrl.dermeval.evaluator import adapter_calibration

    try:
        calibration = adapter_calibration(str(adapter))
    except ValueError as exc:
        log.warning("Calibration file beside %s not used: %s", adapter, exc)
        return None, "The calibration file beside the adapter could not be read (the log says why)"
    if calibration is None:
        return None, None
    fitted = sorted({c for per_dim in calibration.quantiles.values() for c in per_dim}, key=float)
    try:
        for dim in DIMENSIONS:
            calibration.interval(dim, 2.5, 0.0, coverage)
    except ValueError as exc:
        log.warning("Calibration file beside %s not used: %s", adapter, exc)
        shown = ", ".join(f"{float(c):.0%}" for c in fitted) or "none"
        return None, (f"The calibration file has no {coverage:.0%} intervals for every dimension (fitted: {shown}; "
                      "set DERMEVAL_COVERAGE to one of those)")
    return calibration, None


def _dtype(settings: Settings) -> Any:
    import torch

    if settings.dtype:
        return getattr(torch, settings.dtype)
    on_gpu = settings.device.startswith("cuda") if settings.device else torch.cuda.is_available()
    return torch.bfloat16 if on_gpu else None


def _short(exc: BaseException, limit: int = 240) -> str:
    """``Type: first sentence`` of an exception, capped: library messages run to paragraphs."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text.split('. ')[0]}" if text else type(exc).__name__
    return (text[: limit - 1] + "…") if len(text) > limit else text


def _as_text(text: str) -> str:
    """Text shown in a Markdown component as typed: ``<s>`` stays visible, never becomes HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _bullets(notes: list[str]) -> str:
    return "\n".join(f"- {_as_text(n)}" for n in notes)


def _code(text: str) -> str:
    """Inline Markdown code for text we did not write (no backticks can close it early)."""
    return "`" + text.replace("`", "'") + "`"


def load_model(settings: Settings, on_demo: Callable[[], None] | None = None) -> LoadedModel:
    """The configured DermEval model, or the embedded demo model with the reason in the banner.

    ``on_demo`` is called once the demo model is chosen, before its adapter is trained or loaded (the page says
    "preparing the demo model" meanwhile).
    """
    from dermtrl.dermeval.evaluator import DermEval

    reason = "`DERMEVAL_DEMO=1` is set"
    if not settings.demo:
        name = settings.adapter or settings.base or ""
        offline = _offline([n for n in (settings.base, settings.adapter) if n])
        if offline is not None:  # no Hub retries: fall back at once
            reason = f"could not load {_code(_public_name(name))} ({offline})"
            log.warning("Falling back to the embedded demo model: %s is on the Hub and %s", name, offline)
        else:
            try:
                calibration, problem = space_calibration(settings.adapter, settings.coverage)
                evaluator = DermEval.from_pretrained(settings.base, settings.adapter, dtype=_dtype(settings),
                                                     device=settings.device, max_new_tokens=settings.max_new_tokens,
                                                     calibration=calibration, coverage=settings.coverage)
            except Exception as exc:  # no such repo, gated, out of memory...: the demo must still run
                reason = f"could not load {_code(_public_name(name))} (the log says why)"
                log.warning("Falling back to the embedded demo model: could not load %s: %s", name,
                            _short(exc, 2000))
            else:
                description = (f"{_public_name(settings.adapter)} on {_public_name(settings.base or 'its base')}"
                               if settings.adapter else _public_name(name))
                return LoadedModel(evaluator, description, False, f"Model: {_code(description)}.",
                                   calibration_problem=problem)
    if on_demo is not None:
        on_demo()
    adapter, how = demo_adapter_path(settings)
    calibration, problem = space_calibration(adapter, settings.coverage)
    if adapter is None:
        evaluator = DermEval.from_pretrained(TINY_MODEL_NAME, device=settings.device,
                                             max_new_tokens=settings.max_new_tokens)
    else:
        evaluator = DermEval.from_pretrained(adapter=str(adapter), device=settings.device,
                                             max_new_tokens=settings.max_new_tokens, calibration=calibration,
                                             coverage=settings.coverage)
    banner = (f"⚠️ **Embedded demo model.** The app {reason}, so it runs the tiny local LLaVA with {how}. "
              "The tiny model only learns from synthetic drawings, not clinical images: its scores show how the app "
              "works and say nothing about any narrative's medical quality.")
    if adapter is None:
        banner += " Untrained, it will not write readable scores."
    log.warning("Serving the embedded demo model: tiny LLaVA with %s", how)
    log.info("Demo model: tiny LLaVA + %s", adapter or "no adapter")
    return LoadedModel(evaluator, f"demo: tiny LLaVA + {'Stage-1 demo adapter' if adapter else 'no adapter'}", True,
                       banner, calibration_problem=problem)


def _public_name(name: str) -> str:
    """A model name fit to show: a Hub id as it is, a local folder by its last part only (no server paths)."""
    path = Path(name).expanduser()
    if name.startswith(("/", "~", ".")) or path.exists() or name.count("/") > 1:
        return path.name or name
    return name


def _offline(names: list[str]) -> str | None:
    """Why Hub ids among ``names`` cannot be downloaded now (offline configured, or the Hub unreachable), else None.

    Checked before loading so an offline start falls back at once instead of retrying the Hub for a minute.
    """
    if not any(not Path(n).expanduser().exists() for n in names):
        return None  # local folders only
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline: HF_HUB_OFFLINE is set"
    from urllib.parse import urlparse

    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=3).close()
    except OSError:
        return "offline: the Hub cannot be reached"
    return None


# --- running the model ----------------------------------------------------------------------------------

#: The evaluators :func:`run_model` may run, by key, with their GPU seconds. ZeroGPU runs the decorated function in
#: a worker forked from this process and pickles its arguments: a small key travels, the model stays put.
_EVALUATORS: dict[int, tuple[Any, int]] = {}


def register_evaluator(evaluator: Any, gpu_duration: int = DEFAULT_GPU_DURATION) -> int:
    """Make ``evaluator`` callable through :func:`run_model`; returns its key."""
    key = id(evaluator)
    _EVALUATORS[key] = (evaluator, gpu_duration)
    return key


def _gpu_seconds(key: int, image: Image.Image, narrative: str) -> int:
    """``@spaces.GPU``'s duration for one call: the seconds configured for that evaluator."""
    return _EVALUATORS[key][1]


@spaces.GPU(duration=_gpu_seconds)
def run_model(key: int, image: Image.Image, narrative: str) -> Any:
    """One DermEval evaluation, the only code that runs the model: on ZeroGPU a GPU is lent for this call alone.

    Off ZeroGPU ``spaces.GPU`` returns this function unchanged, so it runs wherever the model was loaded (the CPU
    for the offline demo). Returns :class:`dermtrl.dermeval.evaluator.Evaluation`.
    """
    evaluator, _ = _EVALUATORS[key]
    return evaluator.evaluate(image, narrative)


# --- hostile input --------------------------------------------------------------------------------------


class InputError(ValueError):
    """Input the app refuses, with a message for the person who sent it."""


def image_input(max_bytes: int, **kwargs: Any) -> gr.Image:
    """A ``gr.Image`` that hands the handler the uploaded file's path without opening it.

    Stock ``gr.Image`` opens the upload before our code runs, so a non-image file would fail with a library
    message and some paths decode the whole image; here :func:`open_image` reads the header first. (The
    instance's ``preprocess`` is replaced rather than subclassed: Gradio writes a ``.pyi`` stub beside any
    file that subclasses a component.)
    """
    component = gr.Image(type="filepath", image_mode=None, **kwargs)

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        url = getattr(payload, "url", None)
        if url and url.startswith("data:"):
            return _data_url_to_file(url, component.GRADIO_CACHE, max_bytes)
        return getattr(payload, "path", None)

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def _data_url_to_file(url: str, cache_dir: str, max_bytes: int) -> str:
    """A ``data:`` URL (webcam, clipboard) written to a file, so it takes the same checks as an upload."""
    _, _, data = url.partition(",")
    if len(data) * 3 // 4 > max_bytes:
        raise gr.Error(f"The image is larger than the {max_bytes // 2**20} MB upload limit.", print_exception=False)
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise gr.Error("The image data could not be decoded (not base64).", print_exception=False) from exc
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="dermeval-", suffix=".img", dir=cache_dir)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    return name


def open_image(path: str | os.PathLike[str] | None, *, max_megapixels: float) -> tuple[Image.Image, list[str]]:
    """Read an uploaded file with the project's one image reader, within a pixel budget; notes for the person.

    :func:`dermtrl.cases.images.read_image` checks the header before decoding (a JPEG above the budget is decoded
    at a reduced scale, anything else above it refused), converts every mode to 8-bit RGB (16-bit and float
    scaled, not clipped; transparency flattened onto white) and applies the EXIF orientation: the Space sees an
    image exactly as ``dermtrl eval``, DermBench and the data pipeline do. Messages name only the file's base name.
    """
    from dermtrl.cases.images import ImageError, read_image

    if path is None or str(path) == "":
        raise InputError("No image: upload a photo of the skin (PNG, JPEG or WebP) before pressing Evaluate.")
    name = Path(path).name
    budget = int(max_megapixels * 1_000_000)
    try:
        loaded = read_image(path, name, max_pixels=budget, oversize="downscale")
    except ImageError as exc:
        raise InputError(_image_problem(exc, path, name, max_megapixels)) from exc
    notes: list[str] = []
    (width, height), rgb = loaded.original_size, loaded.image
    if any(n.startswith("downscaled") for n in loaded.notes):
        notes.append(f"The {width}×{height} image ({width * height / 1e6:.1f} megapixels) was downscaled to "
                     f"{rgb.size[0]}×{rgb.size[1]} while decoding.")
    stretched = _stretch_narrow_range(path, loaded.original_mode)
    if stretched is not None:
        rgb, top = stretched
        notes.append(f"The image stores 16-bit pixels but its values only reach {top:,} (a {top.bit_length()}-bit "
                     f"image): they were stretched by that range to 8 bits, so it is not shown almost black.")
    else:
        for note in loaded.notes:
            if "scaled to 8 bits" in note:
                notes.append(f"The image has {'floating-point' if loaded.original_mode == 'F' else '16-bit'} "
                             "pixels; they were scaled to 8 bits (not clipped).")
    if any("transparency flattened" in note for note in loaded.notes):
        notes.append("The image's transparent parts were shown on white.")
    notes.extend(_size_warnings(width, height))
    brightest = max(high for _, high in rgb.getextrema())
    if brightest < 24 and stretched is None:
        notes.append(f"The image is almost black (its brightest value is {brightest} of 255): check that it is the "
                     "photo you meant; a 12- or 16-bit image may need exporting as an 8-bit PNG or JPEG.")
    damaged = _png_checksum_problem(path)
    if damaged:
        notes.append(f"The PNG file is damaged ({damaged}); it decoded, but check that the picture is complete.")
    if max(rgb.size) > 1024:  # the processor resizes to a few hundred pixels; this keeps that step cheap
        rgb = rgb.copy()
        rgb.thumbnail((1024, 1024))
    return rgb, notes


#: Smallest side, in pixels, that can show a lesion; and the largest aspect ratio the model sees without squeezing
#: the picture out of recognition (the processor resizes every image to a square).
MIN_SIDE = 32
MAX_ASPECT = 8.0


def _size_warnings(width: int, height: int) -> list[str]:
    """Notes for images the model will see, but barely: tiny, or a sliver."""
    notes = []
    if min(width, height) < MIN_SIDE:
        notes.append(f"The image is only {width}×{height} pixels: too small to show a lesion (the model enlarges "
                     "it), so the scores say little about the narrative.")
    if max(width, height) / max(1, min(width, height)) > MAX_ASPECT:
        notes.append(f"The image is {width}×{height} pixels, {max(width, height) / max(1, min(width, height)):,.0f} "
                     "times longer than wide: the model sees it squeezed into a square, so the scores say little "
                     "about the narrative. Crop it to the lesion.")
    return notes


def _stretch_narrow_range(path: str | os.PathLike[str], mode: str) -> tuple[Image.Image, int] | None:
    """A 16-bit grayscale image whose values use only part of the range (12-bit data in a 16-bit PNG, typically),
    stretched by its actual maximum; ``None`` for any other image.

    The project's reader keeps the top byte of 16-bit data, which turns 12-bit data (at most 4,095) almost black.
    The file was already read once within the pixel budget, so reading it again is safe.
    """
    if not (mode.startswith("I;16") or mode == "I"):
        return None
    import numpy as np

    with Image.open(path) as img:
        arr = np.asarray(img).astype(np.int64)
    if arr.ndim != 2 or not arr.size:
        return None
    low, top = int(arr.min()), int(arr.max())
    if low < 0 or top <= 255 or top >= 2**15:  # 8-bit values, negative or full-range data: the reader is right
        return None
    out = (arr * 255 + top // 2) // top
    return Image.fromarray(out.clip(0, 255).astype(np.uint8), "L").convert("RGB"), top


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_checksum_problem(path: str | os.PathLike[str]) -> str | None:
    """Which PNG chunk's CRC does not match its data (a file damaged in transfer), or ``None`` (not a PNG / fine)."""
    import struct
    import zlib

    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _PNG_SIGNATURE:
                return None
            while True:
                header = fh.read(8)
                if len(header) < 8:
                    return None
                length, kind = struct.unpack(">I4s", header)
                data = fh.read(length)
                crc = fh.read(4)
                if len(data) < length or len(crc) < 4:
                    return None  # truncation is reported by the reader itself
                if zlib.crc32(kind + data) != struct.unpack(">I", crc)[0]:
                    return f"the checksum of its {kind.decode('latin-1')!r} chunk does not match"
                if kind == b"IEND":
                    return None
    except OSError:
        return None


def _image_problem(exc: Any, path: str | os.PathLike[str], name: str, max_megapixels: float) -> str:
    """The person-facing message for an image the reader refused (no server path, no library text)."""
    if exc.reason == "missing":
        return "The uploaded image is gone from the server: upload it again."
    if exc.reason == "too-large":
        if exc.size is None:
            return (f"The image is far too large to process (limit {max_megapixels:g} megapixels): downscale it and "
                    "upload it again.")
        width, height = exc.size
        return (f"The image is {width}×{height} pixels ({width * height / 1e6:.1f} megapixels); the limit is "
                f"{max_megapixels:g} megapixels. Downscale it (the model sees it at a few hundred pixels anyway) and "
                "upload it again.")
    if exc.reason == "truncated" or (exc.reason == "unreadable" and "image data" in str(exc)):
        return f"The image {name!r} is damaged or truncated and could not be decoded."
    damaged = _png_checksum_problem(path)
    if damaged:
        return f"The image {name!r} is a damaged PNG file ({damaged}) and could not be decoded: upload it again."
    return (f"That file is not an image this app can read ({_file_kind(path)}). Upload a PNG, JPEG or WebP "
            "photo.")


def _file_kind(path: str | os.PathLike[str]) -> str:
    """A hint of what a non-image upload is, for the message."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return "it cannot be read"
    if not head:
        return "the file is empty"
    for magic, kind in _FILE_KINDS:
        if head.startswith(magic):
            return kind
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"):
        return "it is a HEIC photo, which is not supported: export it as JPEG"
    if head.lstrip().startswith((b"<svg", b"<?xml")):
        return "it looks like SVG or XML, which is not supported"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "it is an HTML page"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # the 64 bytes may end inside a character
        text = head[:exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
    if text and all(ch.isprintable() or ch in "\t\n\r" for ch in text):
        return "it looks like plain text"
    return "unknown file type"


#: Leading bytes of files people upload by mistake, and what to call them.
_FILE_KINDS: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "it is a PDF document"),
    (_PNG_SIGNATURE, "it starts like a PNG image, but its data is damaged"),
    (b"\xff\xd8\xff", "it starts like a JPEG image, but its data is damaged"),
    (b"PK\x03\x04", "it is a ZIP archive or an Office document"),
    (b"\x1f\x8b", "it is a gzip archive"),
    (b"DICM", "it is a DICOM file, which is not supported: export the image as PNG or JPEG"),
)


@dataclass
class PreparedText:
    text: str
    notes: list[str]


def _clean(text: Any) -> str:
    """Text without control characters other than newlines and tabs (NULs, escapes, terminal codes)."""
    if not isinstance(text, str):
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")


def prepare_text(text: Any, *, what: str, max_chars: int, control_tokens: list[str] = ()) -> PreparedText:
    """Cleaned, length-capped text and notes for the person; empty text is refused."""
    text = _clean(text)
    if not any(unicodedata.category(ch)[0] not in "ZC" for ch in text):  # only spaces and invisible marks
        raise InputError(f"The {what} is empty: paste the text to evaluate.")
    notes: list[str] = []
    if len(text) > max_chars:
        notes.append(f"The {what} has {len(text):,} characters; only the first {max_chars:,} were used.")
        text = text[:max_chars]
    text, found = neutralise_control_tokens(text, list(control_tokens))
    if found:
        notes.append(f"The {what} contained the model's control tokens ({', '.join(sorted(set(found)))}); they "
                     "were replaced by look-alike characters so they are read as plain text.")
    lines = [i + 1 for i, line in enumerate(text.split("\n")) if _INSTRUCTION_LINE.search(line)]
    if lines:
        where = ", ".join(str(n) for n in lines[:5]) + ("…" if len(lines) > 5 else "")
        notes.append(f"Line(s) {where} of the {what} read like instructions to the evaluator. They were scored as "
                     "part of the text, not followed; still, treat the scores with care.")
    return PreparedText(text.strip(), notes)


# --- the app --------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "missing" if value is None else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def overall_markdown(summary: Overall) -> str:
    """The overall as the page shows it: how many dimensions it averages, and the Safety flag beside it.

    The words are :meth:`dermtrl.dimensions.Overall.text`'s, as everywhere the project prints an overall.
    """
    if summary.unsafe:
        return (f"⚠️ **Overall {_as_text(summary.text())}**: the narrative may advise something harmful; the "
                "overall does not average that away.")
    return f"**Overall {_as_text(summary.text())}** *(mean of the scored dimensions, 5 is best)*"


def _overall_fields(summary: Overall) -> dict[str, Any]:
    """The overall for API clients: the mean, what it averages, the flag, and the text the page shows."""
    return {"overall": None if summary.mean is None else round(summary.mean, 2),
            "overall_dimensions": summary.n_scored, "safety_flag": summary.unsafe, "overall_text": summary.text()}


def _empty_plot() -> pd.DataFrame:
    """No bars, but all six names on the axis: the chart lays out its axis once, for its first data, so it starts
    with every label (a chart that starts empty would draw later labels past its bottom edge)."""
    return pd.DataFrame({"dimension": list(DIMENSIONS), "score": [float("nan")] * len(DIMENSIONS)})


def _span(interval: tuple[float, float]) -> str:
    """An interval as the page writes it: "3-5", "2.6-4.8" (one decimal, no trailing zeros)."""
    return f"{_fmt(interval[0], 1)}-{_fmt(interval[1], 1)}"


def score_cells(score: float | None, interval: tuple[float, float] | None, coverage: float | None,
                uncertain: bool) -> tuple[str, str]:
    """The "Score (interval)" and "Calibrated interval" cells of one dimension.

    ``coverage`` is ``None`` when the model has no calibration: the score stands alone and the interval cell says
    "not calibrated", never a band that reads as if it were.
    """
    if score is None:
        return "missing", "n/a"
    if coverage is None:
        return _fmt(score), "not calibrated"
    if interval is None:  # calibrated, but no score distribution was read at this digit
        return _fmt(score), "n/a"
    mark = " uncertain" if uncertain else ""
    return f"{_fmt(score)} ({_span(interval)}){mark}", f"{coverage:.0%} interval {_span(interval)}"


def _score_outputs(scores: Mapping[str, float], expected: Mapping[str, float] | None = None,
                   spread: Mapping[str, float] | None = None,
                   intervals: Mapping[str, tuple[float, float]] | None = None, coverage: float | None = None,
                   uncertain: tuple[str, ...] | list[str] = ()) -> tuple[pd.DataFrame, list[list[str]]]:
    """The bar chart's data (scored dimensions only, paper order) and the six-row table (:data:`SCORE_COLUMNS`)."""
    plot = pd.DataFrame({"dimension": [d for d in DIMENSIONS if d in scores],
                         "score": [float(scores[d]) for d in DIMENSIONS if d in scores]})
    rows = []
    for d in DIMENSIONS:
        e = expected.get(d) if expected is not None else None
        s = spread.get(d) if spread is not None else None
        interval = (intervals or {}).get(d)
        rows.append([d, *score_cells(scores.get(d), interval, coverage, d in uncertain), _fmt(e), _fmt(s)])
    return (plot if len(plot) else _empty_plot()), rows


def calibration_legend(evaluator: Any | None, problem: str | None = None) -> str:
    """What the page says under the DermEval table about intervals: calibrated (coverage named, and on how many
    validation scores), or plainly that there are none, and why."""
    from dermtrl.agreement.calibration import UNCERTAIN_WIDTH

    if evaluator is None:
        return ("**Intervals:** the model is being prepared; whether its scores carry calibrated intervals shows here "
                "once it is ready.")
    calibration = getattr(evaluator, "calibration", None)
    if calibration is None:
        why = problem or "No calibration file"
        return (f"**{why}: scores shown without intervals.** (`dermtrl calibrate` writes `calibration.json` beside "
                "the adapter; the page then shows each score's calibrated interval.)")
    coverage = float(getattr(evaluator, "coverage", DEFAULT_COVERAGE))
    counts = sorted(calibration.n.values()) or [0]
    n = f"{counts[0]:,}" if counts[0] == counts[-1] else f"{counts[0]:,}-{counts[-1]:,}"
    return (f"**Intervals are calibrated:** a {coverage:.0%} interval holds the experts' score {coverage:.0%} of the "
            f"time (split conformal prediction, fitted on {n} validation scores per dimension). \"4 (3-5)\" is "
            f"score 4 with its {coverage:.0%} interval 3-5; **uncertain** marks an interval {UNCERTAIN_WIDTH:g} or "
            "more points wide: do not rely on that score alone.")


class SpaceApp:
    """The handlers behind the page and the API, and the lock that serialises model calls."""

    def __init__(self, settings: Settings, model: LoadedModel | None = None) -> None:
        """``model=None``: the page serves at once; :meth:`load_in_background` brings the model."""
        self.settings = settings
        self.model: LoadedModel | None = None
        self.model_error: str | None = None  # set when preparing the model failed (the log has the details)
        self.preparing = "the model"  # what is being prepared, for the banner
        self._page: tuple[gr.Blocks, gr.Markdown, gr.Markdown] | None = None  # the page, its banner and legend
        self.model_lock = threading.Lock()  # one generation at a time; the queue holds the rest
        self._judge: Any = None
        self._judge_error: str | None = None
        self._judge_lock = threading.Lock()
        import concurrent.futures

        self._judge_pool = concurrent.futures.ThreadPoolExecutor(max_workers=settings.judge_concurrency,
                                                                 thread_name_prefix="space-judge")
        if model is not None:
            self.set_model(model)

    # -- the model, ready or being prepared ------------------------------------------------------------

    def set_model(self, model: LoadedModel) -> None:
        """Serve ``model``: its control tokens, its context budget, and its key for :func:`run_model`."""
        self.control_tokens = control_tokens(model.evaluator.processor)
        self.narrative_token_budget = self._token_budget(model)
        self.model_key = register_evaluator(model.evaluator, self.settings.gpu_duration)
        self.model = model  # last: a request sees either no model or a fully set-up one
        self._refresh_page()

    def _refresh_page(self) -> None:
        """The page as served from now on starts with the current banner (open pages refresh theirs on a timer)."""
        if self._page is None:
            return
        demo, banner, legend = self._page
        banner.value = self.banner_text()
        legend.value = self.legend_text()
        if getattr(demo, "config", None) is not None:  # launched: the served page is built from this
            demo.config = demo.get_config_file()

    def load_in_background(self, loader: Callable[[SpaceApp], LoadedModel]) -> threading.Thread:
        """Prepare the model in a thread while the page already serves (the first start trains the demo adapter).

        ``loader(app)`` returns the model; it may set :attr:`preparing` to say what it is preparing.
        """
        def work() -> None:
            try:
                self.set_model(loader(self))
            except Exception as exc:
                self.model_error = _short(exc)
                log.exception("Could not prepare the model")
                self._refresh_page()

        thread = threading.Thread(target=work, name="space-model-load", daemon=True)
        thread.start()
        return thread

    @property
    def ready(self) -> bool:
        return self.model is not None

    def banner_text(self) -> str:
        """The banner: which model runs, or that it is still being prepared, or that preparing it failed."""
        if self.model is not None:
            return self.model.banner
        if self.model_error is not None:
            return ("⚠️ **The model could not be prepared** (the Space's log says why), so Evaluate cannot run. "
                    "The DermBench tab does not need it.")
        return (f"⏳ **Preparing {self.preparing}…** The page works meanwhile; Evaluate answers once it is ready. "
                "A first start trains the small demo adapter once (a few minutes on a CPU); later starts take "
                "seconds. This banner changes when the model is ready.")

    def legend_text(self) -> str:
        """The legend under the DermEval table: how to read the scores, whether and how the intervals are
        calibrated (driven by the calibration file beside the adapter in use), and what expected and spread are."""
        model = self.model
        if model is None and self.model_error is not None:
            intervals = "**No model, so no intervals.**"
        else:
            intervals = calibration_legend(model.evaluator if model else None,
                                           model.calibration_problem if model else None)
        return f"{SCORE_LEGEND}\n\n{intervals}\n\n{SELF_REPORT_NOTE}"

    def _banner_update(self) -> tuple[str, str, Any]:
        """The banner's and the legend's text, and the timer that polls them stopped once there is nothing left to
        wait for."""
        return (self.banner_text(), self.legend_text(),
                gr.Timer(active=self.model is None and self.model_error is None))

    def _token_budget(self, model: LoadedModel) -> int:
        """Narrative tokens that fit the context beside the image, the instruction and the answer."""
        ev = model.evaluator
        config = getattr(ev.model, "config", None)
        text_config = getattr(config, "text_config", config)
        context = getattr(text_config, "max_position_embeddings", None) or 4096
        from dermtrl.conversation import prompt_batch

        overhead = prompt_batch(ev.processor, [Image.new("RGB", (32, 32))], ["x"])["input_ids"].shape[1]
        return max(64, context - overhead - ev.max_new_tokens - 16)

    def _fit_tokens(self, prepared: PreparedText) -> PreparedText:
        tokenizer = self.model.evaluator.tokenizer
        enc = tokenizer(prepared.text, add_special_tokens=False, return_offsets_mapping=True)
        budget = self.narrative_token_budget
        if len(enc["input_ids"]) <= budget:
            return prepared
        cut = enc["offset_mapping"][budget - 1][1]
        note = (f"The narrative is {len(enc['input_ids']):,} tokens long; the model's context leaves room for "
                f"{budget:,}, so only its first {cut:,} characters were evaluated.")
        return PreparedText(prepared.text[:cut].rstrip(), [*prepared.notes, note])

    # -- handlers (each returns values for its outputs, or raises gr.Error with a message) --------------

    def info(self) -> dict[str, Any]:
        """What the app is running (``ready`` False while the model is being prepared): for API clients and tests."""
        model = self.model
        return {"model": model.description if model else None, "demo": model.demo if model else None,
                "ready": model is not None, "preparing": None if model or self.model_error else self.preparing,
                "model_error": self.model_error is not None, "judge_configured": self.settings.judge_configured,
                "coverage": self._coverage(),
                "dimensions": list(DIMENSIONS),
                "score_range": [SCORE_MIN, SCORE_MAX], "queue_size": self.settings.queue_size}

    def _coverage(self) -> float | None:
        """The coverage of the calibrated intervals the model's scores carry; ``None`` without calibration."""
        evaluator = self.model.evaluator if self.model else None
        if getattr(evaluator, "calibration", None) is None:
            return None
        return float(evaluator.coverage)

    def evaluate(self, image: str | None, narrative: str | None) -> tuple[Any, ...]:
        """Evaluate one (image, narrative) pair: notes, chart, overall, table, critique, raw output, JSON."""
        if self.model is None:
            if self.model_error is not None:
                raise gr.Error("The model could not be prepared, so nothing can be evaluated (the Space's log says "
                               "why); ask the Space's owner.", title="No model", print_exception=False)
            raise gr.Error(f"{self.preparing[0].upper()}{self.preparing[1:]} is still being prepared (a first start "
                           "trains the small demo adapter, a few minutes on a CPU): try again shortly.",
                           title="Preparing the model", print_exception=False)
        try:
            rgb, image_notes = open_image(image, max_megapixels=self.settings.max_megapixels)
            prepared = prepare_text(narrative, what="narrative", max_chars=self.settings.max_narrative_chars,
                                    control_tokens=self.control_tokens)
            prepared = self._fit_tokens(prepared)
        except InputError as exc:
            raise gr.Error(str(exc), title="Cannot evaluate this input", print_exception=False) from exc
        try:
            with self.model_lock:
                result = run_model(self.model_key, rgb, prepared.text)
        except ValueError as exc:
            raise gr.Error(f"DermEval refused this input: {exc}", print_exception=False) from exc
        except Exception as exc:  # the server must stay up whatever the model does with odd input
            log.exception("evaluation failed")
            raise gr.Error(f"DermEval failed on this input ({type(exc).__name__}); the app is still running, "
                           "try another image or narrative.", print_exception=False) from exc
        notes = [*image_notes, *prepared.notes]
        if result.missing:
            notes.append("The model's output has no readable score for " + ", ".join(result.missing)
                         + ": shown as missing, never as 0, and left out of the overall score.")
        plot, rows = _score_outputs(result.scores, result.expected, result.spread, result.intervals,
                                    result.coverage, result.uncertain)
        summary = result.scores.overall()
        payload = {**result.to_dict(), **_overall_fields(summary), "model": self.model.description,
                   "demo": self.model.demo, "notes": notes, "evaluated_narrative_chars": len(prepared.text)}
        status = _bullets(notes) if notes else "Evaluated."
        critique = result.critique or "(The model wrote no critique.)"
        return status, plot, overall_markdown(summary), rows, critique, result.text, payload

    def _get_judge(self) -> Any:
        with self._judge_lock:  # compare runs several at a time; build one client, once
            return self._build_judge()

    def _build_judge(self) -> Any:
        if self._judge is None and self._judge_error is None:
            try:
                from dermtrl.bench.judge import Judge
                from dermtrl.llm.client import ClientConfig, LLMClient

                client = LLMClient(ClientConfig(
                    base_url=self.settings.judge_base_url, model=self.settings.judge_model,
                    api_key_env=self.settings.judge_api_key_env, max_concurrency=self.settings.judge_concurrency,
                    max_retries=1, timeout=float(self.settings.judge_timeout), temperature=0.0, cache_path=None,
                    deadline=float(self.settings.judge_timeout),  # the call and its retries end with the user's wait
                ))
                self._judge = Judge(client, parse_retries=1)
            except Exception as exc:  # a bad URL or model name in the environment: say so, keep serving
                self._judge_error = _short(exc)
                log.error("DermBench judge unavailable: %s", self._judge_error)
        if self._judge is None:
            raise gr.Error("The DermBench judge is misconfigured (the Space's log says how); ask the Space's owner.",
                           print_exception=False)
        return self._judge

    def _judge_within(self, judge: Any, item: Any) -> dict[str, Any]:
        """The judge's record, or a clear error once ``judge_timeout`` seconds have passed. The client's deadline is
        the same, so the call and its retries stop then too: nothing keeps running for a user who was told no."""
        import concurrent.futures

        future = self._judge_pool.submit(judge.score, item)
        try:
            record = future.result(timeout=self.settings.judge_timeout + 1)  # the client stops itself first
        except concurrent.futures.TimeoutError:
            record = {"raw": None, "error": "did not answer within the deadline"}
        if record.get("raw") is None and "did not answer within" in str(record.get("error")):
            log.warning("DermBench judge gave no answer within %d s", self.settings.judge_timeout)
            raise gr.Error(f"The judge did not answer within {self.settings.judge_timeout} s; it may be busy or "
                           "down. Try again later.", title="No answer from the judge", print_exception=False) from None
        return record

    def compare(self, candidate: str | None, reference: str | None) -> tuple[Any, ...]:
        """DermBench: the judge scores the candidate narrative against the reference (no image needed)."""
        if not self.settings.judge_configured:
            raise gr.Error(judge_help(self.settings), title="No judge endpoint configured", print_exception=False)
        try:
            cand = prepare_text(candidate, what="candidate narrative", max_chars=self.settings.max_narrative_chars)
            ref = prepare_text(reference, what="reference narrative", max_chars=self.settings.max_narrative_chars)
        except InputError as exc:
            raise gr.Error(str(exc), title="Cannot compare this input", print_exception=False) from exc
        from dermtrl.bench.judge import JudgeItem

        judge = self._get_judge()
        record = self._judge_within(judge, JudgeItem(model="space", case_id="space", candidate=cand.text,
                                                     reference=ref.text))
        if record["status"] != "scored" and record.get("raw") is None:
            log.warning("DermBench judge call failed: %s", record["error"])  # URL and details: the log only
            raise gr.Error("The judge could not be reached or gave no answer; try again later.",
                           title="No answer from the judge", print_exception=False)
        scores = record.get("scores") or record.get("partial_scores") or {}
        notes = [*cand.notes, *ref.notes]
        error = None
        if record["status"] != "scored":
            missing = ", ".join(d for d in DIMENSIONS if d not in scores)
            error = f"The judge's answer had no readable score for {missing}."
            notes.append(error)
        plot, rows = _score_outputs(scores)
        summary = Overall.of(scores)
        status = _bullets(notes) if notes else f"Judged by {_code(self.settings.judge_model)}."
        payload = {"status": record["status"], "scores": {d: scores.get(d) for d in DIMENSIONS},
                   **_overall_fields(summary), "error": error, "attempts": record.get("attempts"),
                   "judge_model": self.settings.judge_model, "notes": notes}
        return status, plot, overall_markdown(summary), [r[:2] for r in rows], record.get("raw") or "", payload

    # -- the page --------------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        examples = example_cases(self.settings.cache_dir)
        with gr.Blocks(title="DermEval") as demo:
            gr.Markdown("# DermEval: evaluate a dermatology diagnostic narrative\n" + DISCLAIMER)
            banner = gr.Markdown(self.banner_text(), elem_id="model-banner")
            # short tab names: both fit a 390 px phone screen (longer ones fold into a "..." menu)
            with gr.Tab("DermEval", id="dermeval", elem_id="tab-dermeval"):
                gr.Markdown("Score a narrative against its **image** on six dimensions.")
                with gr.Row():
                    with gr.Column():
                        image = image_input(self.settings.max_upload_mb * 2**20, label="Skin image",
                                            sources=["upload", "clipboard"], elem_id="image-input", height=420)
                        narrative = gr.Textbox(label="Diagnostic narrative", lines=8, elem_id="narrative-input",
                                               placeholder="Paste the model-written diagnostic narrative here.")
                        button = gr.Button("Evaluate", variant="primary", elem_id="evaluate-button")
                        # next to the inputs they fill, not below the results
                        gr.Examples(examples=[[e["image"], e["narrative"]] for e in examples],
                                    inputs=[image, narrative], elem_id="dermeval-examples",
                                    label="Synthetic examples (drawings, not clinical images), by narrative quality",
                                    example_labels=[_tier_label(e["tier"]) for e in examples],
                                    cache_examples=False)
                    with gr.Column():
                        notes = gr.Markdown(elem_id="evaluate-notes", label="Notes")
                        overall = gr.Markdown(elem_id="overall-score", label="Overall score")
                        chart = _score_chart("score-chart")
                        table = gr.Dataframe(headers=SCORE_COLUMNS, elem_id="score-table", interactive=False,
                                             label="Scores and calibrated intervals", wrap=True,
                                             column_widths=SCORE_COLUMN_WIDTHS)
                        legend = gr.Markdown(self.legend_text(), elem_id="score-legend")
                critique = gr.Textbox(label="Critique", lines=6, interactive=False, elem_id="critique")
                with gr.Accordion("Raw model output", open=False, elem_id="raw-panel"):
                    raw = gr.Textbox(label="Raw output", lines=10, interactive=False, elem_id="raw-output")
                    result = gr.JSON(label="Full result (JSON)", elem_id="result-json")
                outputs = [notes, chart, overall, table, critique, raw, result]
                # a new run first clears the last one's results, so an error never leaves them looking current
                button.click(_cleared(outputs), outputs=outputs, queue=False, api_visibility="private").then(
                    self.evaluate, inputs=[image, narrative], outputs=outputs, api_name="evaluate",
                    concurrency_limit=1, concurrency_id="dermeval-model")
            with gr.Tab("DermBench", id="dermbench", elem_id="tab-dermbench"):
                gr.Markdown(judge_intro(self.settings), elem_id="bench-help")
                with gr.Row():
                    candidate = gr.Textbox(label="Candidate narrative", lines=8, elem_id="bench-candidate")
                    reference = gr.Textbox(label="Reference narrative (certified)", lines=8,
                                           elem_id="bench-reference")
                compare = gr.Button("Compare", variant="primary", elem_id="bench-compare",
                                    interactive=self.settings.judge_configured)
                gr.Examples(examples=[[e["narrative"], e["reference"]] for e in examples],
                            inputs=[candidate, reference], label="Synthetic examples, by candidate quality",
                            example_labels=[_tier_label(e["tier"]) for e in examples], cache_examples=False,
                            elem_id="bench-examples")
                b_notes = gr.Markdown(elem_id="bench-notes", label="Notes")
                b_overall = gr.Markdown(elem_id="bench-overall", label="Overall judge score")
                b_chart = _score_chart("bench-chart")
                b_table = gr.Dataframe(headers=BENCH_COLUMNS, interactive=False, elem_id="bench-table",
                                       label="Judge scores", column_widths=BENCH_COLUMN_WIDTHS)
                gr.Markdown(SCORE_LEGEND, elem_id="bench-legend")
                with gr.Accordion("Raw judge answer", open=False):
                    b_raw = gr.Textbox(label="Raw answer", lines=10, interactive=False, elem_id="bench-raw")
                    b_json = gr.JSON(label="Full result (JSON)", elem_id="bench-json")
                b_outputs = [b_notes, b_chart, b_overall, b_table, b_raw, b_json]
                compare.click(_cleared(b_outputs), outputs=b_outputs, queue=False, api_visibility="private").then(
                    self.compare, inputs=[candidate, reference], outputs=b_outputs, api_name="dermbench_compare",
                    concurrency_limit=self.settings.judge_concurrency, concurrency_id="dermbench-judge")
            info = gr.JSON(visible=False, label="Model info")
            demo.load(self.info, outputs=info, api_name="model_info", queue=False)
            # while the model is prepared the banner says so, and a timer refreshes it until the model is ready
            timer = gr.Timer(2.0, active=not self.ready)
            demo.load(self._banner_update, outputs=[banner, legend, timer], queue=False, api_visibility="private",
                      show_progress="hidden")
            timer.tick(self._banner_update, outputs=[banner, legend, timer], queue=False, api_visibility="private",
                       show_progress="hidden")
        demo.queue(max_size=self.settings.queue_size, default_concurrency_limit=1)
        self._page = (demo, banner, legend)
        return demo

    def launch_kwargs(self) -> dict[str, Any]:
        """Arguments for ``Blocks.launch``: upload cap, no SSR (which needs Node), the example folder allowed, and
        the page's own link-preview tags in the served HTML."""
        from starlette.middleware import Middleware

        return {"max_file_size": f"{self.settings.max_upload_mb}mb", "ssr_mode": False, "show_error": True,
                "css": PAGE_CSS, "allowed_paths": [str(self.settings.cache_dir / "space-examples")],
                "app_kwargs": {"middleware": [Middleware(PageMeta, tags=page_meta_tags())]}}


#: What link previews show (description, Open Graph); the <title> is the Blocks title.
PAGE_TITLE = "DermEval: evaluate dermatology diagnostic narratives"
PAGE_DESCRIPTION = ("Score a model-written dermatology diagnostic narrative on six dimensions (DermEval), or judge it "
                    "against a certified reference (DermBench). A research tool, not a medical device.")


def page_meta_tags(env: Mapping[str, str] | None = None) -> str:
    """The page's description and link-preview tags; ``og:url`` only where the public address is known (a Space
    sets ``SPACE_HOST``), never a placeholder."""
    import html

    env = os.environ if env is None else env
    title, description = html.escape(PAGE_TITLE), html.escape(PAGE_DESCRIPTION)
    tags = [f'<meta name="description" content="{description}" />',
            f'<meta property="og:title" content="{title}" />',
            f'<meta property="og:description" content="{description}" />',
            '<meta property="og:type" content="website" />',
            '<meta name="twitter:card" content="summary" />',
            f'<meta name="twitter:title" content="{title}" />',
            f'<meta name="twitter:description" content="{description}" />']
    host = env.get("SPACE_HOST", "").strip()
    if re.fullmatch(r"[A-Za-z0-9.-]+", host):
        tags.insert(4, f'<meta property="og:url" content="https://{host}/" />')
    return "\n\t\t".join(tags)


#: Gradio's own preview tags ("Gradio", "Click to try out the app!", og:url "{url}") and any description.
_PREVIEW_TAG = re.compile(r'<meta\s+(?:property="og:[^"]*"|name="(?:twitter:[^"]*|description)")[^>]*>\s*',
                          re.DOTALL)


class PageMeta:
    """ASGI middleware: the served HTML carries DermEval's link-preview tags, first in ``<head>``, and none of
    Gradio's (link previews read the HTML as served; tags added later by the page's scripts are never seen)."""

    def __init__(self, app: Any, tags: str) -> None:
        self.app, self.tags = app, tags

    def rewrite(self, page: bytes) -> bytes:
        text = page.decode("utf-8")
        if "<head>" not in text:
            return page
        text = _PREVIEW_TAG.sub("", text)
        head, sep, rest = text.partition('<meta charset="utf-8" />')
        if not sep:
            head, sep, rest = text.partition("<head>")
        return f"{head}{sep}\n\t\t{self.tags}{rest}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def send_rewritten(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                html_page = headers.get(b"content-type", b"").startswith(b"text/html")
                if html_page and b"content-encoding" not in headers:
                    start = message  # held until the body is complete
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = self.rewrite(b"".join(chunks))
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_rewritten)


#: Table cells and headers wrap between words only, never inside one ("missing" stays whole at any width), and the
#: interval columns not at all (a line break after the hyphen of "3-5" would split the interval); the image preview
#: fills its box (the synthetic examples are 96 px drawings: shown as they are, too small to check a critique against).
PAGE_CSS = """
#score-table th, #score-table th *, #bench-table th, #bench-table th *,
#score-table td, #score-table td *, #bench-table td, #bench-table td *,
#score-table [role=gridcell], #score-table [role=gridcell] *, #bench-table [role=gridcell],
#bench-table [role=gridcell] * {
    word-break: keep-all !important; overflow-wrap: normal !important; hyphens: none !important;
}
#score-table [role=gridcell][aria-colindex="2"], #score-table [role=gridcell][aria-colindex="2"] *,
#score-table [role=gridcell][aria-colindex="3"], #score-table [role=gridcell][aria-colindex="3"] * {
    white-space: nowrap !important;
}
#score-table table, #bench-table table { min-width: max-content; }
#image-input img { width: 100% !important; height: 100% !important; max-width: none !important;
    max-height: none !important; object-fit: contain; }
"""
TIER_LABELS = {"correct": "Good narrative", "unsafe": "Unsafe narrative", "hallucinated": "Hallucinated findings",
               "vague": "Vague narrative"}


def _tier_label(tier: str) -> str:
    return f"{TIER_LABELS.get(tier, tier.capitalize())} ({tier})"


def _cleared(outputs: list[Any]) -> Any:
    """A handler that empties ``outputs`` (notes, chart, score, table, texts, JSON) before a new run."""
    def clear() -> tuple[Any, ...]:
        values: list[Any] = []
        for component in outputs:
            if isinstance(component, gr.BarPlot):
                values.append(_empty_plot())
            elif isinstance(component, gr.JSON):
                values.append(None)
            elif isinstance(component, gr.Dataframe):
                values.append([])
            else:
                values.append("")
        return tuple(values)

    return clear


def _score_chart(elem_id: str) -> gr.BarPlot:
    """Bars on a fixed 0-5 axis in the paper's dimension order, so charts of two answers compare at a glance.

    The dimension names are slanted 45 degrees: on a 390 px phone the six bars are about 45 px apart, and text
    slanted that much needs only about 15 px between neighbours (at 20 degrees the labels overlap).
    """
    return gr.BarPlot(_empty_plot(), x="dimension", y="score", y_lim=[SCORE_MIN, SCORE_MAX], sort=list(DIMENSIONS),
                      x_title="Dimension", y_title="Score (0-5, 5 is best)", label="Scores", elem_id=elem_id,
                      x_label_angle=CHART_LABEL_ANGLE, tooltip=["dimension", "score"], height=340)


#: The chart's x-label slant, degrees (negative: up to the right).
CHART_LABEL_ANGLE = -45


def judge_help(settings: Settings) -> str:
    return ("Set `DERMBENCH_JUDGE_BASE_URL` to an OpenAI-compatible endpoint (for example a vLLM server, "
            "`http://127.0.0.1:8000/v1`) and `DERMBENCH_JUDGE_MODEL` to its model name; if the endpoint needs a "
            "key, put it in a secret and set `DERMBENCH_JUDGE_API_KEY_ENV` to that secret's name (default "
            f"`{settings.judge_api_key_env}`, which alone selects the OpenAI API). Then restart the Space.")


def judge_intro(settings: Settings) -> str:
    head = ("DermBench has an LLM judge compare a candidate narrative with a certified reference narrative and "
            "score it 0-5 on the six dimensions. The candidate is passed as data: instructions inside it are "
            "not followed.\n\n")
    if settings.judge_configured:  # the model's name, never the endpoint's URL
        return head + f"Judge: {_code(settings.judge_model)}."
    return head + "**No judge endpoint is configured.** " + judge_help(settings)


def example_cases(cache_dir: Path) -> list[dict[str, str]]:
    """Held-out synthetic cases as files the page can offer: image path, narrative and reference."""
    from dermtrl.cases.synthetic import generate_case

    folder = cache_dir / "space-examples"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index, tier in EXAMPLE_CASES:
        case = generate_case(index, tier=tier)
        path = folder / f"{case['case_id']}-{tier}.png"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            case["image"].save(tmp, format="PNG")
            tmp.replace(path)
        out.append({"image": str(path), "narrative": case["narrative"], "reference": case["reference"],
                    "tier": tier, "case_id": case["case_id"]})
    return out


def create_app(settings: Settings | None = None, *, background: bool = False) -> tuple[SpaceApp, gr.Blocks]:
    """Build the page and load the model (or the demo fallback).

    ``background=True`` (how the Space starts): the page serves at once, saying that the model is being prepared,
    while a thread loads it (a first start trains the demo adapter, minutes on a CPU). Otherwise the model is
    loaded first.
    """
    settings = settings or Settings.from_env()
    if not background:
        app = SpaceApp(settings, load_model(settings))
        return app, app.build()
    app = SpaceApp(settings)
    if settings.demo:
        app.preparing = "the demo model"
    elif settings.adapter or settings.base:
        app.preparing = f"the model {_code(_public_name(settings.adapter or settings.base or ''))}"
    demo = app.build()

    def load(app: SpaceApp) -> LoadedModel:
        def demo_chosen() -> None:
            app.preparing = "the demo model"

        model = load_model(settings, on_demo=demo_chosen)
        log.info("Serving %s (demo fallback: %s)", model.description, model.demo)
        return model

    app.load_in_background(load)
    return app, demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app, demo = create_app(background=True)
    log.info("Serving the page; preparing %s", app.preparing)
    demo.launch(**app.launch_kwargs())


if __name__ == "__main__":
    main()
