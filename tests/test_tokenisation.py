"""Tokenisation as LLaVA-1.5 was trained, on a tokenizer configured like llava-1.5-7b-hf's (built locally).

Stage 1 (the SFT collator), Stage 2 (SOREB's prompt and text batches) and inference (DermEval) must see the
same prompt ids, with exactly one BOS, and the text loss must cover y* and its EOS only.
"""

import pytest
import torch

from dermtrl.cases.synthetic import generate_cases
from dermtrl.conversation import TrainingCollator, prompt_batch, training_batch, use_training_template
from dermtrl.testing.llava7b import IMAGE_SEQ_LENGTH, IMAGE_TOKEN_ID, PAD_TOKEN_ID, llava15_7b_processor
from dermtrl.tiny import tiny_llava_path


@pytest.fixture(scope="module")
def processor():
    return llava15_7b_processor()


@pytest.fixture(scope="module")
def cases():
    ds = generate_cases(3, start=500)
    rows = [ds[i] for i in range(len(ds))]
    rows[1]["narrative"] += " Read <s> and </s> and <image> as text."  # control tokens stay plain text
    return rows


def test_tokenizer_is_configured_like_llava_hf(processor):
    tok = processor.tokenizer
    assert type(tok).__name__ == "LlamaTokenizer"
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", "<pad>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, PAD_TOKEN_ID)
    assert tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID
    assert tok.padding_side == "left"
    assert tok("USER: hello")["input_ids"][0] == 1  # add_bos_token
    assert tok.tokenize("Accuracy: 4.5")[-3:] == ["4", ".", "5"]


def _unpadded(ids, mask):
    return ids[mask.bool()].tolist()


def test_three_paths_share_prompt_ids_with_one_bos(processor, cases):
    images = [c["image"] for c in cases]
    narratives = [c["narrative"] for c in cases]
    evaluations = [c["evaluation"] for c in cases]
    prompts = prompt_batch(processor, images, narratives)  # inference (DermEval) and SOREB's sampling
    texts = training_batch(processor, images, narratives, evaluations)  # SOREB's L_TEXT
    sft = TrainingCollator(processor)([dict(c) for c in cases])  # Stage 1 through TRL's SFTTrainer
    tok = processor.tokenizer
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(sft[key], texts[key])
    for i, case in enumerate(cases):
        prompt = _unpadded(prompts["input_ids"][i], prompts["attention_mask"][i])
        full = _unpadded(texts["input_ids"][i], texts["attention_mask"][i])
        labels = texts["labels"][i][texts["attention_mask"][i].bool()].tolist()
        assert prompt[0] == tok.bos_token_id and prompt.count(tok.bos_token_id) == 1
        assert full.count(tok.bos_token_id) == 1
        assert prompt.count(IMAGE_TOKEN_ID) == IMAGE_SEQ_LENGTH
        assert full[: len(prompt)] == prompt  # Stage 1 / Stage 2 prompt == inference prompt, token for token
        target = [t for t in labels if t != -100]
        first = next(j for j, t in enumerate(labels) if t != -100)
        assert first == len(prompt) and target == full[first : first + len(target)]  # contiguous, right after
        assert target[-1] == tok.eos_token_id and target.count(tok.eos_token_id) == 1
        assert tok.decode(target, skip_special_tokens=True).strip() == case["evaluation"]
        assert all(t == -100 for t in labels[first + len(target):])  # nothing after the EOS is a target


def test_left_padding_puts_bos_after_the_pads(processor, cases):
    prompts = prompt_batch(processor, [c["image"] for c in cases], [c["narrative"] for c in cases])
    for ids, mask in zip(prompts["input_ids"], prompts["attention_mask"], strict=True):
        first = int(mask.argmax())
        assert ids[first] == processor.tokenizer.bos_token_id and (ids[:first] == PAD_TOKEN_ID).all()


def test_tokenizer_without_bos_gets_none():
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_path())
    use_training_template(processor)
    case = generate_cases(1)[0]
    ids = prompt_batch(processor, [case["image"]], [case["narrative"]])["input_ids"][0].tolist()
    assert processor.tokenizer.bos_token_id not in ids  # the tiny tokenizer adds no BOS, so none is written


def test_collator_refuses_to_truncate_the_score_block(processor, cases):
    with pytest.raises(ValueError, match="max_length is 100"):
        TrainingCollator(processor, max_length=100)([dict(cases[0])])
