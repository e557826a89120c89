"""How DermEval is prompted: one message builder for training, inference and SOREB, and LLaVA-1.5's template.

Keeping the prompt in one function guarantees that Stage 1, Stage 2 ("the same prompt as in inference",
Section 3.3) and inference see identical inputs: Stage 1 (TRL's SFTTrainer, through :class:`TrainingCollator`),
Stage 2 (:func:`prompt_batch` and :func:`training_batch` in ``SOREBTrainer``) and inference (``DermEval``) all
tokenize through :func:`_tokenize` below.

Tokenisation is the model's own: the rendered conversation is tokenized with ``add_special_tokens=True``, so a
tokenizer that adds a BOS token (llava-hf's LlamaTokenizer, ``add_bos_token=True``) starts every sequence with
exactly one BOS, as LLaVA-1.5 was trained and as llava-hf's processor prompts it; a tokenizer that adds none (the
tiny model's) adds nothing. The template itself never writes the BOS: with the Llama tokenizer's ``legacy=False``
Metaspace, text rendered right after a literal ``<s>`` loses its word-start marker ("US" instead of "▁US"),
which would silently change the first prompt token. (TRL's own vision collator passes ``add_special_tokens=False``
and would drop the BOS, so Stage 1 uses :class:`TrainingCollator` instead.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dermtrl.prompts import evaluator_prompt

#: LLaVA-1.5's conversation format as in llava-hf's processors ("USER: <image>\n... ASSISTANT: ..."), with the
#: assistant turn (and its end-of-sequence token) inside {% generation %} markers so that TRL's
#: ``assistant_only_loss`` masks everything else. TRL ships no training template for LLaVA-1.5, so the
#: recipes install this one on the processor, for the real 7B model as for the tiny one.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}"
    "{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}"
    "{% for p in parts if p['type'] == 'text' %}{{ p['text'] + ' ' }}{% endfor %}"
    "{% elif message['role'] == 'user' %}USER: "
    "{% for p in parts if p['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for p in parts if p['type'] == 'text' %}{{ p['text'] + ' ' }}{% endfor %}"
    "{% else %}ASSISTANT: {% generation %}"
    "{% for p in parts if p['type'] == 'text' %}{{ p['text'] }}{% endfor %}"
    "{{ eos_token }}{% endgeneration %}{{ ' ' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


#: Builds DermEval's user text from a narrative: the paper's prompt by default, or the official release's
#: (``Release.dermeval_prompt_builder()``) for adapters trained on the official target format.
PromptFn = Callable[[str], str]


def evaluator_messages(narrative: str, evaluation: str | None = None, prompt_fn: PromptFn | None = None
                       ) -> list[dict[str, Any]]:
    """The conversation DermEval sees: image + narrative + Figure 4's instruction (or ``prompt_fn``'s), then y*
    when training."""
    text = (prompt_fn or evaluator_prompt)(narrative)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
    ]
    if evaluation is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": evaluation}]})
    return messages


def use_training_template(processor: Any) -> None:
    """Install the LLaVA-1.5 template with generation markers on a processor (and its tokenizer)."""
    processor.chat_template = LLAVA_CHAT_TEMPLATE
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.chat_template = LLAVA_CHAT_TEMPLATE


def control_tokens(processor: Any) -> list[str]:
    """The model's own control tokens (``<image>``, ``</s>``, ...), longest first."""
    tokenizer = getattr(processor, "tokenizer", processor)
    image_token = getattr(processor, "image_token", None) or "<image>"
    return sorted({*tokenizer.all_special_tokens, image_token}, key=len, reverse=True)


def neutralise_control_tokens(text: str, tokens: Sequence[str]) -> tuple[str, list[str]]:
    """Replace control tokens written inside a narrative by look-alikes, so they are read as plain text.

    The tokenizer would read them as the real tokens: ``<image>`` makes the prompt's image count wrong (the
    model refuses the batch) and ``</s>`` ends the turn early. Look-alike angle quotes keep the text readable.
    """
    found = [t for t in tokens if t and t in text]
    for token in sorted(found, key=len, reverse=True):
        text = text.replace(token, token.replace("<", "\u2039").replace(">", "\u203a"))
    return text, found


def _conversations(processor: Any, images: Sequence[Any], narratives: Sequence[str],
                   evaluations: Sequence[str] | None, prompt_fn: PromptFn | None = None):
    tokens = control_tokens(processor)
    conversations = []
    for i, (image, narrative) in enumerate(zip(images, narratives, strict=True)):
        narrative, _ = neutralise_control_tokens(narrative, tokens)
        messages = evaluator_messages(narrative, evaluations[i] if evaluations is not None else None, prompt_fn)
        messages[0]["content"][0]["image"] = image
        conversations.append(messages)
    return conversations


def _tokenize(processor: Any, conversations: list, *, generation_prompt: bool, max_length: int | None = None
              ) -> Any:
    """The one tokenisation of DermEval conversations (see the module docstring for the BOS)."""
    batch = processor.apply_chat_template(
        conversations, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True,
        return_tensors="pt", return_assistant_tokens_mask=not generation_prompt,
        processor_kwargs={"padding": True, "padding_side": "left" if generation_prompt else "right",
                          "add_special_tokens": True},
    )
    if max_length is not None:
        lengths = batch["attention_mask"].sum(1)
        if int(lengths.max()) > max_length:
            raise ValueError(
                f"a training sequence has {int(lengths.max())} tokens but max_length is {max_length}: truncating "
                f"would cut the label evaluation's score fields; raise max_length or set it to null"
            )
    return batch


def prompt_batch(processor: Any, images: Sequence[Any], narratives: Sequence[str],
                 prompt_fn: PromptFn | None = None) -> Any:
    """Left-padded prompts ending in the generation prompt: what DermEval generates from (inference and SOREB)."""
    return _tokenize(processor, _conversations(processor, images, narratives, None, prompt_fn),
                     generation_prompt=True)


def training_batch(processor: Any, images: Sequence[Any], narratives: Sequence[str], evaluations: Sequence[str],
                   max_length: int | None = None, prompt_fn: PromptFn | None = None) -> Any:
    """Full conversations with ``labels`` on the assistant's tokens only (y* and its EOS), right-padded.

    This is the L_TEXT target of eq. 1 (Stage 1) and eq. 5 (Stage 2).
    """
    batch = _tokenize(processor, _conversations(processor, images, narratives, evaluations, prompt_fn),
                      generation_prompt=False, max_length=max_length)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[batch.pop("assistant_masks") == 0] = -100
    batch["labels"] = labels
    return batch


@dataclass
class TrainingCollator:
    """Stage 1's ``data_collator`` for TRL's SFTTrainer: rows of cases -> :func:`training_batch`.

    Rows keep their ``image``, ``narrative`` and ``evaluation`` columns (the recipe sets
    ``remove_unused_columns=False``), so Stage 1 tokenizes exactly as Stage 2 and inference do. Images are read by
    the project's one reader (:func:`~dermtrl.cases.images.read_cell`: EXIF orientation, transparency on white,
    16-bit scaled), whatever the cell holds (a path, encoded bytes, an ``Image`` cell or a PIL image), so Stage 1
    trains on the pixels inference sees.
    """

    processor: Any
    max_length: int | None = None
    prompt_fn: PromptFn | None = None  # the official release's DermEval prompt (target_format: official)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        from dermtrl.cases.images import read_cell

        images = [read_cell(row["image"], where=f"case {row.get('case_id', '?')!r}").image for row in rows]
        return dict(training_batch(self.processor, images, [row["narrative"] for row in rows],
                                   [row["evaluation"] for row in rows], max_length=self.max_length,
                                   prompt_fn=self.prompt_fn))


#: Written beside an adapter trained on another prompt than the paper's: which one, so inference uses it too.
PROMPT_RECORD = "dermeval_prompt.json"


def save_prompt_record(folder: str, target_format: str, release: str | None) -> None:
    """Record beside the adapter that it was trained on ``target_format`` (and where its prompt came from)."""
    import json
    from pathlib import Path

    if target_format == "paper":
        return
    (Path(folder) / PROMPT_RECORD).write_text(json.dumps(
        {"target_format": target_format, "release": str(Path(release).resolve()) if release else None}, indent=2))

