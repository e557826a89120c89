"""benchmarks/critique_slots.py: the slot diagnostics find exactly the errors put into a critique."""

from __future__ import annotations

import re

import pytest

from dermtrl.cases.synthetic import SYNTHETIC_VERSION, generate_case


@pytest.fixture(scope="module")
def slots(load_benchmark):
    return load_benchmark("critique_slots")


def _records(n: int) -> list[dict]:
    cases = [generate_case(200_000 + i) for i in range(n)]
    return [{"case_id": c["case_id"], "critique": c["evaluation"].split("\n\n")[0]} for c in cases]


def test_the_generators_own_critiques_are_right_everywhere(slots):
    counts, wrong, present, by_word = slots.slot_accuracy(_records(40))
    assert counts["Count"]["n"] > 20 and counts["Diagnosis"]["n"] > 20
    for tally in counts.values():
        assert all(tally[m] == tally["n"] for m in slots.MEASURES), tally
    assert sum(wrong.values()) == 0 and present["Count"] == counts["Count"]["n"]
    assert all(t["copied"] == t["n"] and t["as read"] == 0 for t in by_word.values())
    assert sum(t["n"] for (slot, _), t in by_word.items() if slot == "Count") == counts["Count"]["n"]


def test_a_miscopied_count_is_found_in_the_count_slot_only(slots):
    records = _records(40)
    swap = {"a single": "two", "two": "three", "three": "four", "four": "a single"}
    changed = repeats = 0
    for r in records:
        m = re.search(r"Count: narrative (.+?), image (.+?), (right|wrong)\.", r["critique"])
        if m:  # write another count as the narrative's, with a verdict consistent with what is written
            said = swap[m.group(1)]
            verdict = "right" if said == m.group(2) else "wrong"
            repeats += said == m.group(2)
            line = f"Count: narrative {said}, image {m.group(2)}, {verdict}."
            r["critique"] = r["critique"].replace(m.group(0), line)
            changed += 1
    counts, wrong, _, by_word = slots.slot_accuracy(records)
    assert changed == counts["Count"]["n"] > 0
    assert counts["Count"]["copied"] == 0 and counts["Count"]["read"] == changed
    assert counts["Count"]["verdict"] == changed  # consistent with the words written ...
    assert counts["Count"]["true verdict"] < changed  # ... but not with the truth where the swap flips it
    assert wrong["Count"] == changed and sum(wrong.values()) == changed
    assert all(t["copied"] == t["n"] for s, t in counts.items() if s != "Count")
    # a miscopy "as read" is one whose swapped word happens to be the picture's
    assert sum(t["as read"] for (slot, _), t in by_word.items() if slot == "Count") == repeats > 0


def test_records_of_another_case_version_are_refused(slots):
    record = {"case_id": "synth-v1-0-200000", "critique": ""}
    with pytest.raises(ValueError, match="synth-v1-0-200000.*" + re.escape(SYNTHETIC_VERSION)):
        slots.slot_accuracy([record])


def test_picture_readings_of_the_generators_critiques_are_exact(slots):
    confusion, extras = slots.picture_readings(_records(60))
    assert sum(confusion["Count"].values()) > 30
    for slot, pairs in confusion.items():
        assert all(seen == read for seen, read in pairs), (slot, pairs)
    for extra, tally in extras.items():
        assert tally["n present"] + tally["n absent"] == 60
        assert tally["present"] == tally["n present"] and tally["absent"] == 0, (extra, tally)


def test_picture_readings_find_a_count_read_as_a_single_and_an_extra_never_seen(slots):
    records = _records(60)
    for r in records:
        r["critique"] = re.sub(r"(Count: narrative .+?), image .+?, (right|wrong)\.", r"\1, image a single, \2.",
                               r["critique"])
        r["critique"] = r["critique"].replace("The image also shows a red halo.", "")
    confusion, extras = slots.picture_readings(records)
    assert {read for _, read in confusion["Count"]} == {"a single"}
    assert {seen for seen, _ in confusion["Count"]} > {"a single"}
    assert extras["a red halo"]["n present"] > 0 and extras["a red halo"]["present"] == 0
    assert extras["fine white scale"]["present"] == extras["fine white scale"]["n present"]


def test_the_writers_of_the_records_are_named_without_local_folders(slots):
    records = [{"model": "/home/me/outputs/dermeval-sft"}] * 2 + [{"model": "org/dermeval-7b"}, {}]
    assert slots.writers(records) == "dermeval-sft (2), org/dermeval-7b (1), unknown model (1)"
