"""Label and prompt lengths (dermtrl.lengths) on a tokenizer and processor shaped like llava-1.5-7b-hf's."""

import json

import pytest

from dermtrl import lengths
from dermtrl.cases.synthetic import generate_cases
from dermtrl.conversation import prompt_batch, training_batch
from dermtrl.testing.llava7b import IMAGE_SEQ_LENGTH, llava15_7b_processor


@pytest.fixture(scope="module")
def processor():
    return llava15_7b_processor()


def test_measured_lengths_equal_the_tokenized_ones(processor):
    ds = generate_cases(4, start=700)
    rows = [ds[i] for i in range(len(ds))]
    measured = lengths.measure_cases(processor, ds)
    images = [r["image"] for r in rows]
    prompts = prompt_batch(processor, images, [r["narrative"] for r in rows])["attention_mask"].sum(1).tolist()
    texts = training_batch(processor, images, [r["narrative"] for r in rows], [r["evaluation"] for r in rows])
    labels = (texts["labels"] != -100).sum(1).tolist()  # y* and its EOS, as the text loss sees them
    assert measured.prompt.max == max(prompts) and measured.label.max == max(labels)
    assert measured.prompt.n == measured.label.n == 4
    assert min(prompts) > IMAGE_SEQ_LENGTH
    assert measured.max_new_tokens >= 1.25 * max(labels) and measured.max_new_tokens % 16 == 0


def test_stats_and_budget():
    stats = lengths.LengthStats.of([10, 20, 30, 40])
    assert (stats.n, stats.mean, stats.p95, stats.max) == (4, 25.0, 40, 40)
    assert lengths.budget_for(100) == 128 and lengths.budget_for(400) == 512
    with pytest.raises(ValueError, match="empty"):
        lengths.LengthStats.of([])


def test_save_writes_generation_config_and_record(tmp_path):
    from transformers import GenerationConfig

    stats = lengths.LengthStats.of([300, 410])
    seq = lengths.SequenceLengths(label=stats, prompt=lengths.LengthStats.of([700]), max_new_tokens=528)
    lengths.save(seq, tmp_path, GenerationConfig(eos_token_id=2, pad_token_id=32001, temperature=0.7,
                                                 do_sample=True))
    config = GenerationConfig.from_pretrained(tmp_path)
    assert config.max_new_tokens == 528 and config.do_sample is False and config.eos_token_id == 2
    assert lengths.recorded_max_new_tokens(tmp_path) == 528
    record = json.loads((tmp_path / lengths.LENGTHS_FILE).read_text())
    assert record["label_tokens"]["max"] == 410 and record["prompt_tokens"]["max"] == 700
    assert lengths.recorded_max_new_tokens(tmp_path / "absent") is None
    assert lengths.recorded_max_new_tokens("no-such-org/no-such-adapter") is None  # offline: falls back
