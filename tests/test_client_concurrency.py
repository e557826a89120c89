"""The adaptive limit on requests in flight, by hand-computed cases: slow start, its shortcut, halving, deadlines."""

from __future__ import annotations

import threading
import time

import pytest

from dermtrl.llm.concurrency import INITIAL_IN_FLIGHT, AdaptiveLimit


def test_slow_start_goes_straight_to_the_limit_when_no_queue_could_time_out():
    gate = AdaptiveLimit(64)
    assert gate.current == INITIAL_IN_FLIGHT
    gate.answered(0.1, timeout=120.0)  # 64 answers of 0.1 s in a row: 6.4 s, within a quarter of 120 s
    assert gate.current == 64


def test_one_slow_answer_keeps_the_ramp():
    gate = AdaptiveLimit(8)
    gate.answered(5.0, timeout=120.0)  # 8 answers of 5 s in a row: 40 s, more than a quarter of 120 s
    assert gate.current == INITIAL_IN_FLIGHT + 1
    gate.answered(0.1, timeout=120.0)  # a fast one later does not make the slow one go away
    assert gate.current == INITIAL_IN_FLIGHT + 2


def test_slow_start_ramps_one_per_answer_where_a_queue_could_time_out():
    gate = AdaptiveLimit(20)
    gate.answered(0.3, timeout=2.0)  # 20 x 0.3 s = 6 s: a one-slot server's queue would time requests out
    assert gate.current == INITIAL_IN_FLIGHT + 1
    gate.timed_out()
    assert gate.current == (INITIAL_IN_FLIGHT + 1) // 2 and gate.lowest == gate.current


def test_a_slot_wait_ends_at_the_deadline_and_passes_its_wake_up_on():
    gate = AdaptiveLimit(1)
    got: list[str] = []
    with gate.slot():
        with pytest.raises(TimeoutError):
            with gate.slot(deadline=time.monotonic() + 0.05):
                pass

        def waiter() -> None:
            with gate.slot(deadline=time.monotonic() + 10):
                got.append("in")

        thread = threading.Thread(target=waiter)
        thread.start()
    thread.join(5)
    assert got == ["in"] and gate.active == 0


def test_over_capacity_answers_halve_once_per_round():
    gate = AdaptiveLimit(64)
    gate.answered(0.1, timeout=120.0)
    assert gate.current == 64
    sent_before = time.monotonic()
    for _ in range(40):  # a round of 429s for requests that all went out before the first cut
        gate.overloaded(sent_before)
    assert gate.current == 32 and gate.lowest == 32
    gate.overloaded(time.monotonic())  # a request sent after the cut says the server is still over capacity
    assert gate.current == 16
