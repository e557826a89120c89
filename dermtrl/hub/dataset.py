"""Publishing a built dataset and its card to the Hugging Face Hub, or to a local folder for a dry run.

The Hub path: ``create_repo`` (existing repos are reused), ``DatasetDict.push_to_hub`` (parquet shards through
the Hub's LFS upload, images embedded), then our card as ``README.md``, carrying the ``configs`` and
``dataset_info`` that ``datasets`` wrote so ``load_dataset(repo_id)`` finds every split; huggingface_hub
validates the card's YAML with the Hub (``validate-yaml``) before committing it. The dry run writes exactly the
files that would be uploaded (``data/<split>-00000-of-00001.parquet`` and ``README.md``) to a folder, which
``load_dataset(folder)`` reads the same way.

The endpoint is the one ``huggingface_hub`` and ``datasets`` read from ``HF_ENDPOINT`` when first imported; the
token is huggingface_hub's (``HF_TOKEN`` or the saved login) unless one is passed. Tokens never appear in
messages: errors are redacted.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermtrl.errors import PublishError
from dermtrl.llm.client import redact

__all__ = ["PublishError", "PublishResult", "load_built", "publish_dataset"]


@dataclass
class PublishResult:
    """Where the dataset went, the files it consists of, and the splits left out (empty ones)."""

    target: str
    files: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    skipped_splits: list[str] = field(default_factory=list)
    commit: str | None = None


def load_built(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """A built dataset folder: the ``DatasetDict`` and its card text (``README.md``)."""
    from datasets import DatasetDict, load_from_disk

    folder = Path(path)
    if not (folder / "dataset_dict.json").is_file():
        raise PublishError(f"{folder}: not a dataset built by `dermtrl data build` (no dataset_dict.json)")
    card = folder / "README.md"
    if not card.is_file():
        raise PublishError(f"{folder}: no README.md card beside the dataset (rebuild it, or write one)")
    ds = load_from_disk(str(folder))
    if not isinstance(ds, DatasetDict):
        raise PublishError(f"{folder}: expected a DatasetDict")
    return ds, card.read_text(encoding="utf-8")


def _kind(card_text: str, ds: Any) -> str | None:
    columns = set(next(iter(ds.values())).column_names)
    if "reference" in columns:
        return "dermbench"
    if "expert_scores" in columns:
        return "dermeval"
    return None


def publish_dataset(
    path: str | os.PathLike[str],
    repo_id: str | None = None,
    *,
    dry_run: str | os.PathLike[str] | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload dataset with dermtrl",
) -> PublishResult:
    """Push the built dataset at ``path`` and its card to ``repo_id`` on the Hub, or write them to ``dry_run``."""
    from dermtrl.data.cards import validate_card

    ds, card_text = load_built(path)
    empty = [name for name, split in ds.items() if len(split) == 0]
    from datasets import DatasetDict

    ds = DatasetDict({name: split for name, split in ds.items() if len(split)})
    if not ds:
        raise PublishError(f"{path}: every split is empty; nothing to publish")
    try:
        validate_card(card_text, kind=_kind(card_text, ds), n_rows=sum(len(s) for s in ds.values()))
    except ValueError as exc:
        raise PublishError(f"{path}/README.md: {exc}") from None
    splits = {name: len(split) for name, split in ds.items()}
    if dry_run is not None:
        return _write_folder(ds, card_text, Path(dry_run), splits, empty)
    if not repo_id or repo_id.count("/") != 1:
        raise PublishError(f"repo id must be 'namespace/name', got {repo_id!r}")
    return _push(ds, card_text, repo_id, private=private, token=token, commit_message=commit_message,
                 splits=splits, empty=empty)


def _write_folder(ds: Any, card_text: str, folder: Path, splits: dict[str, int], empty: list[str]) -> PublishResult:
    from huggingface_hub import DatasetCard

    if folder.exists() and any(folder.iterdir()):
        if not (folder / "README.md").is_file() or not (folder / "data").is_dir():
            raise PublishError(f"{folder}: exists and is not an earlier dry run; choose an empty folder")
        shutil.rmtree(folder / "data")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    files = []
    for name, split in ds.items():
        rel = f"data/{name}-00000-of-00001.parquet"
        split.to_parquet(str(folder / rel))
        files.append(rel)
    card = DatasetCard(card_text)
    card.data.configs = [{"config_name": "default",
                          "data_files": [{"split": name, "path": f"data/{name}-*"} for name in ds]}]
    (folder / "README.md").write_text(str(card), encoding="utf-8")
    files.append("README.md")
    return PublishResult(str(folder), sorted(files), splits, empty)


def _push(ds: Any, card_text: str, repo_id: str, *, private: bool, token: str | None, commit_message: str,
          splits: dict[str, int], empty: list[str]) -> PublishResult:
    from datasets import config as datasets_config
    from huggingface_hub import DatasetCard, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        raise PublishError("HF_HUB_OFFLINE is set: publishing needs the Hub (or use --dry-run FOLDER)")
    hub_endpoint = constants.ENDPOINT.rstrip("/")
    if datasets_config.HF_ENDPOINT.rstrip("/") != hub_endpoint:
        raise PublishError(
            f"huggingface_hub uses {hub_endpoint} but datasets uses {datasets_config.HF_ENDPOINT}: set HF_ENDPOINT "
            "before starting Python (both read it when first imported)"
        )
    secret = token or os.environ.get("HF_TOKEN")
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        ds.push_to_hub(repo_id, private=private, token=token, commit_message=commit_message)
        pushed = DatasetCard.load(repo_id, repo_type="dataset", token=token)
        card = DatasetCard(card_text)
        for key in ("configs", "dataset_info"):  # what datasets wrote is what load_dataset will read
            value = getattr(pushed.data, key, None) or pushed.data.to_dict().get(key)
            if value:
                setattr(card.data, key, value)
        commit = card.push_to_hub(repo_id, repo_type="dataset", token=token,
                                  commit_message="Dataset card (dermtrl)")
        files = sorted(api.list_repo_files(repo_id, repo_type="dataset"))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise PublishError(redact(f"publishing to {hub_endpoint}/datasets/{repo_id} failed: "
                                  f"{type(exc).__name__}: {exc}", secret)) from None
    commit_oid = getattr(commit, "oid", None) if commit is not None and not isinstance(commit, str) else None
    return PublishResult(str(url), files, splits, empty, commit_oid)
