"""A tiny LLaVA-1.5-shaped model built locally, so every code path runs offline exactly as on the real model.

The folder it writes loads with ``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained`` just like
``llava-hf/llava-1.5-7b-hf``: a CLIP vision tower, a two-layer projector and a Llama text model (a few hundred
thousand parameters), a byte-level BPE tokenizer trained here on the project's own prompts and synthetic
cases, a CLIP image processor and the LLaVA-1.5 chat template with ``{% generation %}`` markers (TRL's
``assistant_only_loss`` needs them).

LLaVA-1.5 reaches DermEval training already able to see: CLIP was pretrained, and LLaVA's own first stage aligned
the projector on image captions. A random tiny model cannot see at all, and a DermEval run on top of it would
learn to judge from the narrative's text alone. So the build ends with the same kind of feature alignment:
``PRETRAIN_STEPS`` steps of captioning synthetic images ("This image shows ..."), drawn from their own seeded
stream (never the cases that DermEval trains or is tested on).

LLaVA-1.5's language model also arrives able to set two words side by side and say whether they agree; a tiny
model trained on captions alone cannot, and in development Stage 1 did not teach it in its budget (colour verdicts
at chance while both colours were written right). So the build ends with ``COMPARE_STEPS`` text-only batches, each
a description in the narratives' sentence form with *random* features, extra findings and diagnosis ("The image shows
two small red lesions ... I also note a red halo. The answer is vitiligo."), then its claims checked against random
words ("Colour: narrative red, image black, wrong.", half of them agreeing) and its extra findings against random ones
("The image also shows fine white scale. Not visible: a red halo."), interleaved with as many caption batches so the
eyes are kept. The base never sees a case, a picture's findings beside a description, a diagnosis reasoned from a
picture, or a score: what DermEval learns about judging (the claim read from the narrative checked against the
picture, the scores from the checks), it learns in Stage 1 and Stage 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dermtrl.conversation import LLAVA_CHAT_TEMPLATE

TINY_VERSION = "tiny-llava-v7"  # v7: pinned kernels, 2,500 comparison batches with a cool-down (v6: 1,500, constant)
IMAGE_SIZE = 64
PATCH_SIZE = 8
IMAGE_SEQ_LENGTH = (IMAGE_SIZE // PATCH_SIZE) ** 2  # "default" strategy drops CLS: (S/P)^2 tokens
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
PRETRAIN_STEPS = 1000  # captioning steps of batch 16 (about 1-2 minutes on 2 CPU cores, once per cache)
COMPARE_STEPS = 2500  # text-only comparison batches of 16, each after a caption batch (most of the build)
COOLDOWN = 0.2  # share of the comparison stage over which the learning rate falls linearly to 0

def default_cache_dir() -> Path:
    return Path(os.environ.get("DERMTRL_CACHE", Path.home() / ".cache" / "dermtrl"))


def _prompt_texts() -> list[str]:
    from dermtrl import prompts

    return [v for k, v in sorted(vars(prompts).items()) if k.isupper() and isinstance(v, str)]


@functools.lru_cache(maxsize=1)
def corpus_key() -> str:
    """Identify what the tokenizer is trained on (the prompts and the synthetic cases' texts).

    The cache folder is named after it, so a new prompt or a change in the synthetic texts builds a new tiny model
    instead of silently reusing one whose tokenizer was trained on other text; an edit to the generator that
    leaves its texts unchanged keeps the model (and every adapter trained on it).
    """
    import hashlib

    digest = hashlib.sha256(TINY_VERSION.encode())
    for text in _corpus(0):
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:10]


def _corpus(seed: int) -> list[str]:
    from dermtrl.cases.synthetic import generate_case

    texts = _prompt_texts()
    for i in range(400):
        case = generate_case(i, seed, render_image=False)
        texts += [case["reference"], case["narrative"], case["evaluation"]]
    texts += [f"{a}.{b}" for a in range(11) for b in range(10)]
    return texts


def _train_tokenizer(seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Digits are split one by one so a score is one token per digit: the evaluator's score-token
    # probabilities (expected score and confidence) then read straight off the logits.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    # padding_side is saved only when passed to the constructor; LLaVA generation needs left padding.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=2048,
    )


def _caption_batch(processor, rng, size: int):
    """Synthetic images with their observation-only captions, labels on the caption (and its EOS) only."""
    from dermtrl.cases.synthetic import CONDITIONS, describe, draw_image, sample_findings
    from dermtrl.prompts import CAPTION_PROMPT

    images, texts = [], []
    prefix = f"USER: <image>\n{CAPTION_PROMPT} ASSISTANT:"
    for _ in range(size):
        findings = sample_findings(rng.choice(CONDITIONS), rng)
        images.append(draw_image(findings, rng))
        caption = f"This image shows {describe(findings)}." + "".join(f" I also note {e}." for e in findings.extras)
        texts.append(f"{prefix} {caption}{processor.tokenizer.eos_token}")
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True, padding_side="right")
    n_prefix = processor(images=images[:1], text=[prefix], return_tensors="pt")["input_ids"].shape[1]
    labels = batch["input_ids"].clone()
    labels[:, :n_prefix] = -100
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return batch


def _prefetched(make, n: int):
    """``make()`` ``n`` times, each built while the previous batch trains.

    Drawing pictures and tokenising is Python work and torch's kernels release the GIL, so one thread ahead hides
    most of it (the build runs torch on one thread, leaving the second core idle). One producer draws from the
    seeded generators in the same order as a plain loop, so the batches, and the model, are the same.
    """
    import queue
    import threading

    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has stopped

    def produce() -> None:
        try:
            for _ in range(n):
                if not hand_over(make()):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            hand_over(exc)

    worker = threading.Thread(target=produce, name="dermtrl-tiny-batches", daemon=True)
    worker.start()
    try:
        for _ in range(n):
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def pretrain_captions(model, processor, steps: int, seed: int = 0, batch_size: int = 16, lr: float = 1e-3) -> None:
    """LLaVA-style feature alignment on synthetic captions (all weights: the tiny model starts random)."""
    import random

    import torch
    from transformers import get_cosine_schedule_with_warmup

    if steps <= 0:
        return
    rng = random.Random(f"dermtrl-tiny-pretrain:{seed}")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 30), steps)
    model.train()
    for batch in _prefetched(lambda: _caption_batch(processor, rng, batch_size), steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.eval()


def _comparison_batch(tokenizer, rng, size: int):
    """Random descriptions, each followed by its claims checked against random words (half agreeing) and its extra
    findings against random ones; labels on every token but padding. There is no picture: what the claims are checked
    against is drawn at random.

    The extra findings are checked in the critique's own sentences: without them (tiny model v5), Stage 1's "Not
    visible: ..." sentence differed from the generator's in 30 of 32 validation critiques (seed 42; v6: 17 of 32),
    and the vision-reliance probe of 100 validation cases read 1.58x and 2.20x (seeds 42, 43; v6: 2.87x, 2.14x).
    """
    from dataclasses import replace

    from dermtrl.cases.synthetic import (
        CONDITIONS,
        EXTRAS,
        NON_EXTRA_HALLUCINATIONS,
        Claims,
        claim_words,
        claimed_extras,
        extra_lines,
        finding_words,
        random_findings,
        render_narrative,
        verdict_line,
    )

    words = claim_words()
    texts = []
    for _ in range(size):
        findings, diagnosis = random_findings(rng), rng.choice(CONDITIONS).label
        findings = replace(findings, extras=tuple(e for e in EXTRAS if rng.random() < 0.3))
        invented = (rng.choice(NON_EXTRA_HALLUCINATIONS),) if rng.random() < 0.2 else ()
        claims = Claims(findings, diagnosis, reasoning=False, advice="none", hallucinations=invented)
        # the narratives' own sentences, with random features: "The image shows ... I also note ... The answer is ..."
        lines = [render_narrative(claims)]
        for key, claim in finding_words(findings).items():
            lines.append(verdict_line(key, claim, claim if rng.random() < 0.5 else rng.choice(words[key])))
        # extra findings checked as the critique checks them, against random ones "seen" (claimed ones half the time)
        seen = tuple(e for e in EXTRAS if rng.random() < (0.5 if e in findings.extras else 0.3))
        lines.extend(extra_lines(claimed_extras(claims), seen))
        lines.append(verdict_line("Diagnosis", diagnosis,
                                  diagnosis if rng.random() < 0.5 else rng.choice(words["Diagnosis"])))
        texts.append(" ".join(lines) + tokenizer.eos_token)
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    return {**batch, "labels": labels}


def pretrain_comparisons(model, processor, steps: int, seed: int = 0, batch_size: int = 16, lr: float = 1e-3) -> None:
    """Text-only comparison batches, each after a caption batch (so reading the picture is not forgotten).

    Each feature's verdict is learnt all at once, at a step that the last bits of the float sums decide: with 1,500
    batches at a constant rate (v6), five builds on different kernels compared at 68-97%, each having learnt a
    different subset of the six features (one never said "wrong" for colour, site, size or border). 2,500 batches,
    the rate falling linearly to 0 over the last ``COOLDOWN`` share, learn all six (100% on 128 texts; 24 of 25
    "Not visible" lines right). Annealing over the whole stage (cosine, an earlier recipe) read the pictures better
    but Stage 1 on that base copied the narrative's count only half the time (1.96x instead of 2.43x on the
    vision-reliance probe of 100 validation cases, one seed), so the rate stays constant until the cool-down.
    """
    import random

    import torch

    if steps <= 0:
        return
    caption_rng = random.Random(f"dermtrl-tiny-compare-captions:{seed}")
    claim_rng = random.Random(f"dermtrl-tiny-compare:{seed}")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    total, stable = 2 * steps, int(2 * steps * (1 - COOLDOWN))
    schedule = torch.optim.lr_scheduler.LambdaLR(  # max(1, ...): COOLDOWN = 0 keeps the rate constant to the end
        optimizer, lambda step: 1.0 if step < stable else max(0.0, (total - step) / max(1, total - stable)))
    model.train()
    pairs = _prefetched(lambda: (_caption_batch(processor, caption_rng, batch_size),
                                 _comparison_batch(processor.tokenizer, claim_rng, batch_size)), steps)
    for pair in pairs:
        for batch in pair:
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    model.eval()


#: The kernels the build runs on. Its float sums follow the instruction set that torch (ATen), MKL and oneDNN pick for
#: the CPU, and thousands of training steps carry the last bit into every skill: with v6's recipe, an AVX-512 machine
#: built a base that compared two words at 75% (68% with MKL alone pinned) where the AVX2 kernels' base compared at
#: 97%. Pinned, every x86-64 machine with AVX2 builds the same bits; other CPUs ignore these variables and build a
#: model that differs in the last bits, and v7's recipe gives it the same skills (an unpinned AVX-512 build compared
#: at 94-98%; see pretrain_comparisons).
BUILD_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def build_tiny_llava(output_dir: str | Path, seed: int = 0, pretrain_steps: int = PRETRAIN_STEPS,
                     compare_steps: int = COMPARE_STEPS) -> Path:
    """Write a tiny LLaVA (model, processor, tokenizer, chat template) to ``output_dir``.

    ``pretrain_steps`` of caption pretraining give it eyes, ``compare_steps`` the habit of comparing two words (see the
    module docstring); 0 and 0 leave it random. The build runs in a fresh Python process under :data:`BUILD_ENV`,
    because the kernels are chosen when torch loads, so the same base comes out whatever the machine.
    """
    command = [sys.executable, "-m", "dermtrl.tiny", str(output_dir), "--seed", str(seed),
               "--pretrain-steps", str(pretrain_steps), "--compare-steps", str(compare_steps)]
    # the child imports this very package, also when it was found through sys.path rather than installed (space/app.py)
    package_root = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(command, env={**os.environ, **BUILD_ENV, "PYTHONPATH": python_path}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building the tiny LLaVA into {output_dir} failed (exit code {done.returncode}); "
                           "the build's own error is printed above")
    return Path(output_dir)


def _build_here(output_dir: str | Path, seed: int, pretrain_steps: int, compare_steps: int) -> Path:
    """The build itself, in this process (see :func:`build_tiny_llava` for why it runs in its own)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)  # a folder that cannot be written fails now, not after the training
    tokenizer = _train_tokenizer(seed)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=IMAGE_SEQ_LENGTH, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    # One thread for the whole build: float sums depend on the thread count, and over 4,000 steps another count
    # gives another model (in one check a 2-thread build compared at 80% where the 1-thread build compares at 100%).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        pretrain_captions(model, processor, pretrain_steps, seed)
        pretrain_comparisons(model, processor, compare_steps, seed)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "dermtrl_tiny.json").write_text(
        json.dumps({"version": TINY_VERSION, "corpus": corpus_key(), "seed": seed, "pretrain_steps": pretrain_steps,
                    "compare_steps": compare_steps, "kernels": torch.backends.cpu.get_cpu_capability(),
                    "build_env": {k: os.environ.get(k) for k in BUILD_ENV}}))
    return output_dir


def tiny_llava_path(seed: int = 0, cache_dir: str | Path | None = None, pretrain_steps: int = PRETRAIN_STEPS,
                    compare_steps: int = COMPARE_STEPS) -> Path:
    """The cached tiny model folder, built on first use (atomically, so concurrent builds cannot clash)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    steps = "" if pretrain_steps == PRETRAIN_STEPS else f"-pre{pretrain_steps}"
    steps += "" if compare_steps == COMPARE_STEPS else f"-cmp{compare_steps}"
    path = root / f"{TINY_VERSION}-{corpus_key()}-seed{seed}{steps}"
    if (path / "dermtrl_tiny.json").exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    # One build per cache at a time: a second process (another test worker, the Space, a second terminal) waits for
    # the first instead of starting its own 12-minute build on the same cores.
    with cache_lock(root / f".{path.name}.lock"):
        if (path / "dermtrl_tiny.json").exists():
            return path
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
        try:
            shipped = shipped_asset(path.name)
            if shipped is not None:  # the package's own copy of this very build: same bits on every machine
                copy_verified(shipped, tmp)
            else:
                build_tiny_llava(tmp, seed, pretrain_steps, compare_steps)
            try:
                tmp.rename(path)
            except OSError:  # another process won the race; its copy is identical
                if not (path / "dermtrl_tiny.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


#: Built models shipped inside the package (``dermtrl/assets``, about 2 MB): the tiny base of the default build and
#: the Space's demo adapter, each with a ``SHA256SUMS`` file. A machine with no cache copies them instead of
#: building (about 13 minutes) or training, so every machine, ARM included, starts from the same bits;
#: ``dermtrl tiny --out DIR`` still rebuilds from scratch, and a slow opt-in test compares a rebuild's checksums.
ASSETS = Path(__file__).resolve().parent / "assets"


def shipped_asset(name: str) -> Path | None:
    """The shipped folder of that name (``tiny-llava-v7-<corpus>-seed0``, ...), or ``None``: a base whose prompts
    or synthetic texts changed has another corpus key in its name, so a stale shipped copy is never used."""
    folder = ASSETS / name
    return folder if (folder / "SHA256SUMS").is_file() else None


def copy_verified(source: Path, target: Path) -> Path:
    """Copy a shipped folder into ``target`` (which may exist, empty) after checking every file's SHA-256."""
    import hashlib

    expected = {}
    for line in (source / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        expected[name.strip()] = digest
    for name, digest in expected.items():
        if hashlib.sha256((source / name).read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"{source / name}: checksum mismatch (a damaged install?); reinstall dermtrl or delete "
                               f"{source} to build it instead")
    target.mkdir(parents=True, exist_ok=True)
    for name in expected:
        shutil.copyfile(source / name, target / name)
    return target


@contextlib.contextmanager
def cache_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``lock_path`` (released by the OS if the holder dies), so concurrent first
    uses of the cache (test workers, Space workers) build or train once; a no-op where ``fcntl`` is missing
    (Windows), where an atomic rename into place still keeps concurrent writers from clashing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: Model name that selects the locally built tiny LLaVA in recipes and configs (a colon is never in a Hub id).
TINY_MODEL_NAME = "dermtrl:tiny"


def resolve_model_name(name: str | None) -> str:
    """Map ``dermtrl:tiny`` to the cached tiny model folder; pass Hub ids and folders through unchanged."""
    if not name:
        raise ValueError("model_name_or_path is required (a Hub id, a folder, or 'dermtrl:tiny')")
    return str(tiny_llava_path()) if name == TINY_MODEL_NAME else name


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build the tiny LLaVA in this process (use build_tiny_llava).")
    parser.add_argument("output_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS)
    parser.add_argument("--compare-steps", type=int, default=COMPARE_STEPS)
    args = parser.parse_args()
    _build_here(args.output_dir, args.seed, args.pretrain_steps, args.compare_steps)
