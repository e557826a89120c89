"""LLaVA-1.5-7B's shape, built locally: its exact architecture config and a tokenizer configured like its own.

Nobody can download ``llava-hf/llava-1.5-7b-hf`` here, so the code paths that depend on its details are tested
against stand-ins built from its published configuration:

* :func:`llava15_7b_config` is ``llava-hf/llava-1.5-7b-hf``'s ``config.json`` written out by hand: a CLIP
  ViT-L/14 tower at 336 px (576 image tokens, features from the second-to-last layer, CLS dropped), a two-layer
  GELU projector and Vicuna-7B-v1.5 (Llama-2-7B: 32 layers, hidden 4096, MLP 11008, 32 heads, vocabulary
  32064). ``num_hidden_layers`` shortens the text model (the memory plan measures one and two layers).
* :func:`llava15_7b_tokenizer` is a transformers ``LlamaTokenizer`` configured as that repo's: ``add_bos_token``
  on, ``<unk>``/``<s>``/``</s>`` at ids 0/1/2, byte fallback, ``<image>`` at id 32000 and ``<pad>`` at 32001,
  ``legacy=False``, left padding. Its merges are trained here on the project's prompts and synthetic cases, so
  token counts are realistic for this text but not identical to the real vocabulary's.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

IMAGE_TOKEN_ID = 32000
PAD_TOKEN_ID = 32001
TEXT_VOCAB = 32000  # sentencepiece pieces; <image> and <pad> are added after them
VOCAB_SIZE = 32064  # the embedding matrix, padded to a multiple of 64 as in llava-hf's config
IMAGE_SIZE = 336
PATCH_SIZE = 14
IMAGE_SEQ_LENGTH = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576


def llava15_7b_config(num_hidden_layers: int = 32, vision_layers: int = 24) -> Any:
    """``llava-hf/llava-1.5-7b-hf``'s architecture (optionally with fewer layers), as a ``LlavaConfig``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers, num_attention_heads=16,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=768, hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=4096, intermediate_size=11008, num_hidden_layers=num_hidden_layers,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
        hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN_ID, tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=IMAGE_SEQ_LENGTH,
    )


def _corpus() -> list[str]:
    from dermtrl import prompts
    from dermtrl.cases.synthetic import generate_case

    texts = [v for k, v in sorted(vars(prompts).items()) if k.isupper() and isinstance(v, str)]
    for i in range(200):
        case = generate_case(i, 0)
        texts += [case["reference"], case["narrative"], case["evaluation"]]
    return texts + ["USER: ASSISTANT:"]


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # sentencepiece's Llama model splits digits and marks word starts with U+2581; merges never cross either
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True),
    ])
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    learned = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})  # byte fallback, as in Llama's vocabulary
    for piece, _ in learned:
        vocab.setdefault(piece, len(vocab))
    for i in range(len(vocab), TEXT_VOCAB):  # unused pieces up to Llama's 32000, so <image> lands on 32000
        vocab[f"<unused{i}>"] = i
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in json.loads(tok.to_str())["model"]["merges"]]
    return vocab, merges


def llava15_7b_tokenizer() -> Any:
    """A ``LlamaTokenizer`` configured as ``llava-hf/llava-1.5-7b-hf``'s (see the module docstring)."""
    from transformers import LlamaTokenizer

    vocab, merges = _vocab_and_merges()
    tokenizer = LlamaTokenizer(
        vocab=dict(vocab), merges=list(merges), unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        add_bos_token=True, add_eos_token=False, legacy=False, padding_side="left", model_max_length=4096,
    )
    # llava-hf's added tokens: <image> = 32000, then <pad> = 32001
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    image, pad = tokenizer.convert_tokens_to_ids("<image>"), tokenizer.convert_tokens_to_ids("<pad>")
    if (image, pad) != (IMAGE_TOKEN_ID, PAD_TOKEN_ID):
        raise RuntimeError(f"added tokens landed at <image>={image}, <pad>={pad}")
    return tokenizer


def llava15_7b_processor() -> Any:
    """A ``LlavaProcessor`` like llava-hf's: CLIP preprocessing at 336 px, 576 ``<image>`` tokens per image."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from dermtrl.conversation import LLAVA_CHAT_TEMPLATE

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=image_processor, tokenizer=llava15_7b_tokenizer(), patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=LLAVA_CHAT_TEMPLATE)


def small_llava_config(num_hidden_layers: int = 2) -> Any:
    """LLaVA-1.5's layout (CLIP tower, two-layer projector, Llama) at a few thousandths of its width, 16 image
    tokens: the CPU dry run of ``benchmarks/gpu_smoke.sh`` runs its code path on this in seconds."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14, projection_dim=32)
    text = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=num_hidden_layers,
                       num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       max_position_embeddings=1024)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=500, vision_feature_layer=-2,
                       image_seq_length=16)
