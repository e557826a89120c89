"""The official DermBench release as a source of cases: a checkout of its repository, read in its own formats.

The release (``yuhos16/DermBench``, CC BY-NC 4.0) holds the test set's certified reference texts
(``data/cot/<category>/<image>.txt``), a manifest (``data/manifest/dermbench_test.jsonl``: ``id``, ``source``,
``split``, ``category``, ``diagnosis``, ``dermnet_image_path``, ``cot``, ``cot_sha256``), the category counts
(``data/manifest/categories.csv``) and the official candidate and judge prompts (``dermbench/prompts/*.txt``).
Its images are DermNet's and are not redistributed: the user points at their own copy (``image_root``,
default ``$DERMNET_TEST_ROOT``).

Nothing of the release is copied into dermtrl: :func:`load_release` reads the user's checkout, checks every
``cot_sha256`` and reports missing and extra files, and :meth:`Release.rows` gives the cases in the shape every
``dermtrl bench`` stage reads (``case_id`` = the manifest's ``id``, ``image``, ``reference``, ``category``,
``diagnosis``). A manifest line that is not JSON or lacks a field stops loading with an error naming the line
and the field; a missing reference or image costs its case only (a failed record that names the file).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermtrl.errors import DermtrlError

__all__ = ["IMAGE_ROOT_ENV", "MANIFEST", "Release", "ReleaseCase", "ReleaseError", "find_release", "image_root_or_env",
           "is_release", "load_release"]

#: The manifest's path inside a checkout.
MANIFEST = Path("data") / "manifest" / "dermbench_test.jsonl"
CATEGORIES_CSV = Path("data") / "manifest" / "categories.csv"
CANDIDATE_PROMPT = Path("dermbench") / "prompts" / "candidate_generation.txt"
JUDGE_PROMPT = Path("dermbench") / "prompts" / "dermbench_judge.txt"
#: The environment variable the release's own scripts read for the DermNet image root.
IMAGE_ROOT_ENV = "DERMNET_TEST_ROOT"
_FIELDS = ("id", "source", "split", "category", "diagnosis", "dermnet_image_path", "cot", "cot_sha256")


class ReleaseError(DermtrlError, ValueError):
    """The checkout cannot be read as the DermBench release; the message names the file, line and field."""


@dataclass(frozen=True)
class ReleaseCase:
    """One manifest row, with what loading found: its reference text (``None`` if the file is missing) and
    whether the file's sha256 matches the manifest."""

    id: str
    category: str
    diagnosis: str
    dermnet_image_path: str
    cot: str
    cot_sha256: str
    source: str
    split: str
    line: int
    reference: str | None
    sha_ok: bool | None  # None: not checked (file missing)


@dataclass
class Release:
    """A loaded checkout: its cases in manifest order and what the checks found."""

    root: Path
    cases: list[ReleaseCase]
    categories: dict[str, int]  # categories.csv: category -> count, in the file's order
    missing: list[str] = field(default_factory=list)  # manifest ``cot`` paths with no file
    extra: list[str] = field(default_factory=list)  # files under data/cot the manifest does not name
    sha_mismatch: list[str] = field(default_factory=list)  # case ids whose text does not match cot_sha256
    category_counts_differ: list[str] = field(default_factory=list)  # categories.csv vs the manifest

    @property
    def problems(self) -> list[str]:
        """One line per kind of problem found (empty: the checkout is as published)."""
        out = []
        if self.sha_mismatch:
            out.append(f"{len(self.sha_mismatch)} reference(s) do not match their cot_sha256 "
                       f"(e.g. {', '.join(self.sha_mismatch[:3])})")
        if self.missing:
            out.append(f"{len(self.missing)} reference file(s) named in the manifest are missing "
                       f"(e.g. {', '.join(self.missing[:3])})")
        if self.extra:
            out.append(f"{len(self.extra)} file(s) under data/cot are not in the manifest "
                       f"(e.g. {', '.join(self.extra[:3])})")
        if self.category_counts_differ:
            out.append("categories.csv disagrees with the manifest: " + "; ".join(self.category_counts_differ[:3]))
        return out

    def summary(self) -> str:
        checked = sum(1 for c in self.cases if c.sha_ok is not None)
        ok = sum(1 for c in self.cases if c.sha_ok)
        return (f"DermBench release {self.root}: {len(self.cases)} cases in {len({c.category for c in self.cases})} "
                f"categories; sha256 matches {ok} of {checked} reference files; {len(self.missing)} missing, "
                f"{len(self.extra)} extra")

    def rows(self, image_root: str | os.PathLike[str] | None = None, *,
             exclude: Iterable[str] = ()) -> list[dict[str, Any]]:
        """The cases as ``dermtrl bench`` reads them: ``case_id`` (the manifest ``id``), ``image`` (an absolute
        path under ``image_root``, ``None`` without one), ``reference``, ``category``, ``diagnosis`` and
        ``dermnet_image_path``; cases whose id is in ``exclude`` are left out."""
        skip = set(exclude)
        base = Path(image_root).expanduser().resolve() if image_root else None
        return [{"case_id": c.id, "image": str(base / c.dermnet_image_path) if base else None,
                 "reference": c.reference, "category": c.category, "diagnosis": c.diagnosis,
                 "dermnet_image_path": c.dermnet_image_path}
                for c in self.cases if c.id not in skip]

    def prompt_file(self, which: str) -> Path:
        """The path of the official ``candidate`` or ``judge`` prompt in this checkout (checked to exist)."""
        rel = {"candidate": CANDIDATE_PROMPT, "judge": JUDGE_PROMPT}[which]
        path = self.root / rel
        if not path.is_file():
            raise ReleaseError(f"{path}: the official {which} prompt is not in this checkout (protocol 'official' "
                               "reads it from a full checkout of the release, not only its data/ folder)")
        return path

    def prompt(self, which: str) -> str:
        """The official prompt's text, word for word (stripped, as the release's own scripts read it)."""
        return self.prompt_file(which).read_text(encoding="utf-8").strip()

    def dermeval_prompt_builder(self) -> Callable[[str], str]:
        """The release's DermEval prompt (``dermbench/dermeval/prompts.py``: ``build_dermeval_prompt(narrative)``),
        imported from this checkout: training on the official target format uses the official prompt word for
        word, and dermtrl ships none of it. The checkout's package is imported under a private name, so an
        installed ``dermbench`` is neither used nor shadowed."""
        import importlib
        import importlib.util
        import sys

        init = self.root / "dermbench" / "__init__.py"
        if not (self.root / "dermbench" / "dermeval" / "prompts.py").is_file() or not init.is_file():
            raise ReleaseError(f"{self.root}: no dermbench/dermeval/prompts.py (DermEval's official prompt) in this "
                               "checkout")
        name = "_dermtrl_release_" + hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[name]
                raise
        try:
            prompts = importlib.import_module(f"{name}.dermeval.prompts")
        except Exception as exc:  # noqa: BLE001 - the checkout's code: say where it failed
            raise ReleaseError(f"{self.root}: importing dermbench/dermeval/prompts.py failed ({type(exc).__name__}: "
                               f"{exc})") from exc
        builder = getattr(prompts, "build_dermeval_prompt", None)
        if not callable(builder):
            raise ReleaseError(f"{self.root}: dermbench/dermeval/prompts.py has no build_dermeval_prompt")
        return builder


def is_release(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a checkout of the release or its ``data/`` folder."""
    return find_release(path) is not None


def find_release(path: str | os.PathLike[str]) -> Path | None:
    """The checkout root for ``path`` (the root itself, or its ``data/`` folder), or ``None``."""
    try:
        p = Path(path).expanduser()
    except TypeError:
        return None
    if (p / MANIFEST).is_file():
        return p.resolve()
    if p.name == "data" and (p.parent / MANIFEST).is_file():
        return p.parent.resolve()
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_rows(path: Path) -> Iterable[tuple[int, dict[str, str]]]:
    with path.open("r", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReleaseError(f"{path}, line {line_no}: not a JSON object ({exc.msg}; a truncated line?)"
                                   ) from None
            if not isinstance(row, dict):
                raise ReleaseError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
            for name in _FIELDS:
                value = row.get(name)
                if not isinstance(value, str) or not value.strip():
                    what = "missing" if name not in row else f"must be a non-empty string, got {value!r:.40}"
                    raise ReleaseError(f"{path}, line {line_no}, field {name!r}: {what}")
            yield line_no, row


def _categories(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    out: dict[str, int] = {}
    with path.open("r", encoding="utf-8", newline="") as handle:
        for line_no, row in enumerate(csv.DictReader(handle), start=2):
            try:
                out[row["category"]] = int(row["count"])
            except (KeyError, TypeError, ValueError):
                raise ReleaseError(f"{path}, line {line_no}: expected 'category' and an integer 'count'") from None
    return out


def load_release(path: str | os.PathLike[str], *, verify: bool = True) -> Release:
    """Read a checkout of the release (or its ``data/`` folder): the manifest, every reference text, the
    category counts; with ``verify`` (the default) each text's sha256 is checked against the manifest and
    files under ``data/cot`` that the manifest does not name are listed.

    Raises :class:`ReleaseError` naming the file, line and field for a manifest it cannot read, a repeated
    id, or a ``cot`` path that leaves the checkout. Missing files and sha mismatches are reported on the
    :class:`Release` (``problems``), not raised: the run goes on and says so.
    """
    root = find_release(path)
    if root is None:
        raise ReleaseError(f"{path}: not a DermBench release checkout (no {MANIFEST.as_posix()} in it or above it)")
    manifest = root / MANIFEST
    cases: list[ReleaseCase] = []
    missing: list[str] = []
    mismatch: list[str] = []
    seen: dict[str, int] = {}
    named: set[str] = set()
    for line_no, row in _manifest_rows(manifest):
        case_id = row["id"]
        if case_id in seen:
            raise ReleaseError(f"{manifest}, line {line_no}, field 'id': {case_id!r} already on line {seen[case_id]}")
        seen[case_id] = line_no
        cot = Path(row["cot"])
        if cot.is_absolute() or ".." in cot.parts:
            raise ReleaseError(f"{manifest}, line {line_no}, field 'cot': {row['cot']!r} must be a path inside "
                               "the checkout")
        file = root / cot
        named.add(cot.as_posix())
        reference: str | None = None
        sha_ok: bool | None = None
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            missing.append(row["cot"])
        else:
            reference = data.decode("utf-8", errors="replace")
            if verify:
                sha_ok = _sha256(data) == row["cot_sha256"].strip().lower()
                if not sha_ok:
                    mismatch.append(case_id)
        cases.append(ReleaseCase(
            id=case_id, category=row["category"], diagnosis=row["diagnosis"],
            dermnet_image_path=row["dermnet_image_path"], cot=row["cot"], cot_sha256=row["cot_sha256"],
            source=row["source"], split=row["split"], line=line_no, reference=reference, sha_ok=sha_ok,
        ))
    extra: list[str] = []
    cot_root = root / "data" / "cot"
    if verify and cot_root.is_dir():
        for dirpath, _, files in os.walk(cot_root):
            for name in files:
                rel = (Path(dirpath) / name).relative_to(root).as_posix()
                if rel not in named:
                    extra.append(rel)
        extra.sort()
    categories = _categories(root / CATEGORIES_CSV)
    differ: list[str] = []
    if categories:
        counts: dict[str, int] = {}
        for c in cases:
            counts[c.category] = counts.get(c.category, 0) + 1
        for name in dict.fromkeys([*categories, *counts]):
            if categories.get(name) != counts.get(name):
                differ.append(f"{name!r}: categories.csv {categories.get(name, 0)}, manifest {counts.get(name, 0)}")
    return Release(root=root, cases=cases, categories=categories, missing=missing, extra=extra,
                   sha_mismatch=mismatch, category_counts_differ=differ)


def image_root_or_env(image_root: str | os.PathLike[str] | None) -> str | None:
    """``image_root``, else ``$DERMNET_TEST_ROOT``, else ``None`` (text-only: judging works, generation does not);
    a given root that is not a folder raises :class:`ReleaseError`."""
    root = os.fspath(image_root) if image_root else os.environ.get(IMAGE_ROOT_ENV) or None
    if root is not None and not Path(root).expanduser().is_dir():
        where = "image_root" if image_root else f"${IMAGE_ROOT_ENV}"
        raise ReleaseError(f"{where}: {root!r} is not a folder (the root of your DermNet test images)")
    return root
