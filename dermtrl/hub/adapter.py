"""``dermtrl publish adapter``: push a trained DermEval LoRA adapter with its model card to the Hub.

The repo then loads by id alone: ``DermEval.from_pretrained(adapter="you/dermeval-lora")`` reads the base model
from the adapter's config. So publishing rewrites that field when training left a local path there: the
embedded tiny model becomes ``dermtrl:tiny`` (which every dermtrl install can rebuild), any other local folder
must be named by its Hub id with ``--base-model``. What is uploaded:

* ``adapter_model.safetensors`` and ``adapter_config.json`` (safetensors only: a pickled ``.bin`` is refused),
  plus the processor and tokenizer files the recipes save beside them;
* ``README.md``: the model card (base model, training datasets, both stages' configs, the run's Table-1
  agreement report, intended use, limitations, the not-a-medical-device statement, citation);
* ``configs/``: the Stage-1 and Stage-2 YAML configs as given; ``report/``: the agreement report files.

``training_args.bin`` (a pickle) and checkpoints stay behind. ``--dry-run FOLDER`` writes that folder without
pushing, to review the card first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dermtrl.errors import PublishError

__all__ = ["PublishError", "build_model_card", "publish_adapter", "register_publish_adapter", "stage_adapter"]

SYNTHETIC_PREFIX = "dermtrl:"
TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "dermeval_adapter_card.md"
#: Files of a trained adapter folder that belong on the Hub (the processor/tokenizer files the recipes save).
ADAPTER_FILES: tuple[str, ...] = (
    "adapter_model.safetensors", "adapter_config.json", "processor_config.json", "preprocessor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
    "generation_config.json",  # the generation budget DermEval reads beside the adapter
    "calibration.json",  # the calibrated intervals of `dermtrl calibrate`
)
REPORT_FILES: tuple[str, ...] = ("agreement.md", "agreement.json", "agreement.csv")


@dataclass
class CardInputs:
    """What the model card says, gathered from the adapter folder, the configs and the report."""

    repo_id: str
    base_model: str
    adapter_config: dict[str, Any]
    datasets: list[str] = field(default_factory=list)
    synthetic: bool = False
    sft_config: str | None = None
    soreb_config: str | None = None
    report_markdown: str | None = None
    report_source: str | None = None


# --- reading the inputs ---------------------------------------------------------------------------------


def _read_adapter_config(adapter: Path) -> dict[str, Any]:
    if not adapter.is_dir():
        raise PublishError(f"{adapter}: no such adapter folder")
    path = adapter / "adapter_config.json"
    if not path.exists():
        raise PublishError(f"{adapter}: no adapter_config.json; is this a folder written by recipes/sft.py or "
                           "recipes/soreb.py?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if config.get("peft_type") != "LORA":
        raise PublishError(f"{path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters are published")
    if not (adapter / "adapter_model.safetensors").exists():
        pickled = " (it has a pickled adapter_model.bin, which is not published)" if (
            adapter / "adapter_model.bin").exists() else ""
        raise PublishError(f"{adapter}: no adapter_model.safetensors{pickled}; save the adapter with "
                           "safe_serialization=True")
    return config


def resolve_base_model(adapter_config: dict[str, Any], base_model: str | None) -> str:
    """The base model's public name: ``--base-model``, else the adapter's, with local paths resolved or refused."""
    if base_model:
        return base_model
    name = str(adapter_config.get("base_model_name_or_path") or "")
    if not name:
        raise PublishError("the adapter's config names no base model; pass --base-model with its Hub id")
    path = Path(name)
    if (path / "dermtrl_tiny.json").exists():
        from dermtrl.tiny import TINY_MODEL_NAME

        return TINY_MODEL_NAME  # the embedded tiny LLaVA: rebuilt locally by any dermtrl install
    if path.is_absolute() or path.exists() or name.startswith((".", "~")):
        raise PublishError(f"the adapter's base model is the local folder {name!r}, which nobody else can load; "
                           "pass --base-model with the base model's Hub id")
    return name


def _read_yaml(path: str | Path | None, what: str) -> tuple[str | None, dict[str, Any]]:
    if path is None:
        return None, {}
    p = Path(path)
    if not p.is_file():
        raise PublishError(f"{p}: no such {what} file")
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PublishError(f"{p}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise PublishError(f"{p}: a {what} must be a YAML mapping")
    return text.strip(), data


def read_report(source: str | Path) -> tuple[str, Path]:
    """The Table-1 report as Markdown, from ``agreement.json`` (or a folder holding it) or ``dermtrl eval``
    records (``evaluations.jsonl``), rendered by :func:`dermtrl.report.to_markdown`; and the file it came from."""
    from dermtrl.metrics import AgreementReport
    from dermtrl.report import to_markdown

    path = Path(source)
    if path.is_dir():
        candidates = [path / "agreement.json", path / "evaluations.jsonl"]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise PublishError(f"{path}: no agreement.json or evaluations.jsonl in this folder")
        path = found[0]
    if not path.is_file():
        raise PublishError(f"{path}: no such report file")
    if path.suffix == ".jsonl":
        from dermtrl.dermeval.eval_job import agreement_from_records
        from dermtrl.jsonl import read_records

        report = agreement_from_records(read_records(path), label="DermEval")
        if report is None:
            raise PublishError(f"{path}: these records have no expert scores, so there is no agreement to report")
        return to_markdown([report]), path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        reports = [AgreementReport.from_dict(d) for d in (data if isinstance(data, list) else [data])]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PublishError(f"{path}: not an agreement report written by dermtrl ({exc})") from exc
    return to_markdown(reports), path


def _datasets(configs: Sequence[dict[str, Any]], extra: Sequence[str]) -> tuple[list[str], bool]:
    names = [str(c["dataset_name"]) for c in configs if c.get("dataset_name")] + list(extra)
    synthetic = any(n.startswith(SYNTHETIC_PREFIX) for n in names)
    hub = [n for n in dict.fromkeys(names) if not n.startswith(SYNTHETIC_PREFIX)]
    return hub, synthetic


# --- the card -------------------------------------------------------------------------------------------


def build_model_card(inputs: CardInputs) -> str:
    """The README.md of the adapter repo (YAML metadata, then the card from the package template)."""
    from huggingface_hub import ModelCard, ModelCardData

    from dermtrl.prompts import PROMPT_VERSION
    from dermtrl.tiny import TINY_MODEL_NAME
    from dermtrl.trainer.soreb_trainer import SOREBTrainer

    tiny = inputs.base_model == TINY_MODEL_NAME
    tags = ["dermtrl", "dermeval", "dermatology", "lora", "trl", "sft"] + (["soreb"] if inputs.soreb_config else [])
    card_data = ModelCardData(
        library_name="peft",
        base_model=None if tiny else inputs.base_model,  # a Hub id only: the Hub checks it
        datasets=inputs.datasets or None,
        tags=tags,
        license="apache-2.0",
        pipeline_tag="image-text-to-text",
    )
    config = inputs.adapter_config
    base_text = (f"`{TINY_MODEL_NAME}`, dermtrl's tiny LLaVA-1.5-shaped model with random weights, built locally "
                 "by dermtrl (a demo and test model, not a medical one)" if tiny
                 else f"[{inputs.base_model}](https://huggingface.co/{inputs.base_model})")
    targets = config.get("target_modules")
    targets_text = (", ".join(f"`{t}`" for t in sorted(targets)) if isinstance(targets, list)
                    else f"modules matching `{targets}`" if targets else "the default modules")
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=f"DermEval LoRA adapter ({inputs.repo_id})",
        repo_id=inputs.repo_id,
        base_model_text=base_text,
        lora_r=config.get("r"),
        lora_alpha=config.get("lora_alpha"),
        lora_dropout=config.get("lora_dropout"),
        target_modules=targets_text,
        modules_to_save=", ".join(f"`{m}`" for m in config.get("modules_to_save") or []),
        prompt_version=PROMPT_VERSION,
        datasets=inputs.datasets,
        synthetic=inputs.synthetic,
        sft_config=inputs.sft_config,
        soreb_config=inputs.soreb_config,
        report=inputs.report_markdown,
        report_source=inputs.report_source,
        citation=SOREBTrainer._paper["citation"],
    )
    return str(card)


# --- staging and pushing --------------------------------------------------------------------------------


def stage_adapter(
    adapter: str | Path,
    out: str | Path,
    *,
    repo_id: str,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    sft_config: str | Path | None = None,
    soreb_config: str | Path | None = None,
    report: str | Path | None = None,
) -> Path:
    """Write the folder that will be uploaded: adapter files, rewritten config, README.md, configs, report."""
    adapter = Path(adapter)
    config = _read_adapter_config(adapter)
    base = resolve_base_model(config, base_model)
    sft_text, sft_data = _read_yaml(sft_config, "Stage-1 config")
    soreb_text, soreb_data = _read_yaml(soreb_config, "Stage-2 config")
    hub_datasets, synthetic = _datasets([sft_data, soreb_data], datasets)
    if report is None and (adapter / "report" / "agreement.json").exists():
        report = adapter / "report"  # where recipes/soreb.py writes its before/after report
    report_md, report_file = read_report(report) if report is not None else (None, None)
    report_source = None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out}: folder exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (adapter / name).is_file() and name != "adapter_config.json":
            shutil.copy2(adapter / name, out / name)
    (out / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": base}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for text, name in ((sft_text, "stage1_sft.yaml"), (soreb_text, "stage2_soreb.yaml")):
        if text is not None:
            (out / "configs").mkdir(exist_ok=True)
            (out / "configs" / name).write_text(text + "\n", encoding="utf-8")
    if report_file is not None:
        copied = [f for f in REPORT_FILES if (report_file.parent / f).is_file()]
        if copied:
            (out / "report").mkdir(exist_ok=True)
            for f in copied:
                shutil.copy2(report_file.parent / f, out / "report" / f)
        report_source = f"report/{report_file.name}" if report_file.name in copied else report_file.name
    card = build_model_card(CardInputs(
        repo_id=repo_id, base_model=base, adapter_config=config, datasets=hub_datasets, synthetic=synthetic,
        sft_config=sft_text, soreb_config=soreb_text, report_markdown=report_md,
        report_source=report_source,
    ))
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


def publish_adapter(
    adapter: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    **stage_kwargs: Any,
) -> str:
    """Stage the adapter, create the repo if needed and upload it in one commit; the commit's URL."""
    from huggingface_hub import HfApi

    if "/" not in repo_id or repo_id.count("/") > 1 or not all(repo_id.split("/")):
        raise PublishError(f"repo id {repo_id!r} must look like 'user-or-org/name'")
    with tempfile.TemporaryDirectory(prefix="dermtrl-publish-") as tmp:
        staged = stage_adapter(adapter, Path(tmp) / "repo", repo_id=repo_id, **stage_kwargs)
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=staged, repo_type="model", revision=revision,
            commit_message=commit_message or f"Publish DermEval adapter from {Path(adapter).name}",
        )
    return str(info.commit_url)


# --- command line ---------------------------------------------------------------------------------------


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="the trained adapter folder (recipes/sft.py or recipes/soreb.py output_dir)")
    p.add_argument("--repo-id", required=True, help="Hub repo to push to, e.g. you/dermeval-lora")
    p.add_argument("--base-model", help="the base model's Hub id (required when training used a local folder)")
    p.add_argument("--sft-config", help="the Stage-1 recipe config (YAML), shown in the card and uploaded")
    p.add_argument("--soreb-config", help="the Stage-2 recipe config (YAML), shown in the card and uploaded")
    p.add_argument("--dataset", action="append", default=[], metavar="ID",
                   help="a training dataset's Hub id (repeatable; the configs' dataset_name is added)")
    p.add_argument("--report", help="agreement.json (or its folder) or evaluations.jsonl with expert scores "
                                    "(default: ADAPTER/report when recipes/soreb.py wrote one)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", help="branch to push to (created if missing; default main)")
    p.add_argument("--commit-message", help="commit title")
    p.add_argument("--token-env", default=None,
                   help="NAME of a variable holding a Hub token (default: huggingface_hub's own: HF_TOKEN or login)")
    p.add_argument("--dry-run", metavar="FOLDER", default=None,
                   help="write the files that would be uploaded to FOLDER instead of pushing")


def cmd_publish_adapter(args: argparse.Namespace) -> int:
    """Run ``publish adapter``; errors become the CLI's user-facing errors (no traceback)."""
    import os

    from dermtrl.cli._common import CLIError, console

    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise CLIError(f"environment variable {args.token_env} is not set")
    stage_kwargs = {"base_model": args.base_model, "datasets": args.dataset, "sft_config": args.sft_config,
                    "soreb_config": args.soreb_config, "report": args.report}
    try:  # a PublishError is a user error already: main prints it
        if args.dry_run:
            out = stage_adapter(args.adapter, args.dry_run, repo_id=args.repo_id, **stage_kwargs)
            console.print(f"Wrote the adapter repo (not pushed) to [bold]{out}[/bold]; review README.md")
            return 0
        url = publish_adapter(args.adapter, args.repo_id, private=args.private, revision=args.revision,
                              commit_message=args.commit_message, token=token, **stage_kwargs)
    except PublishError:
        raise
    except Exception as exc:  # Hub errors (auth, network): one line, without a traceback
        from huggingface_hub.errors import HfHubHTTPError

        if isinstance(exc, (HfHubHTTPError, OSError)):
            raise CLIError(f"could not push to {args.repo_id}: {exc}") from exc
        raise
    console.print(f"Pushed {args.adapter} to [bold]{args.repo_id}[/bold]: {url}")
    console.print(f"Load it with DermEval.from_pretrained(adapter={args.repo_id!r})")
    return 0


def register_publish_adapter(publish_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``adapter`` to the ``dermtrl publish`` subcommands (``publish_subparsers`` from add_subparsers)."""
    p = publish_subparsers.add_parser("adapter", help="push a trained DermEval LoRA adapter with its model card",
                                      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=cmd_publish_adapter)
    return p
