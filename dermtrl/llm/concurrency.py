"""How many requests a client keeps in flight: at most a limit, fewer while the server is falling behind.

A server that answers few requests at a time (llama.cpp's, one process) queues the rest, and a request's timeout
runs while it waits in that queue. Sending ``max_concurrency`` requests at once can time most of them out, and
each timed-out request is sent again while the server still works through the abandoned one. So the client
ramps up as TCP does: it starts with a few requests in flight, adds one per answer until a request times out
(slow start), then halves what it keeps in flight on each timeout, or on an answer that took over half the
timeout and over twice as long as the fastest answer (the queue is growing: act before anything times out), and
adds one per round of answers (additive increase), never above ``max_concurrency``. A server whose every answer
is slow (long generations) is not throttled: only answers slowed down by waiting count.

Slow start ends at once, at ``max_concurrency``, when even a server answering one request at a time could not
time anything out: ``max_concurrency`` answers as slow as the slowest one so far would all be back within a
quarter of the timeout (100 ms answers, 64 in flight, a 120 s timeout). Ramping up there only costs rounds: at
64 in flight it took four of a run's twelve. Should later answers be slower, the halving above still applies.

A server that says it is over capacity (429 Too Many Requests, 503 or 529 overloaded) gets half as many requests in
flight, as after a timeout, but once per round: the requests already in flight when the limit was cut were sent
before it, and their 429s say nothing new (64 of them at once would otherwise leave one request in flight).

What remains is the wait for the first answer: until it arrives nothing tells how slow the server is, and starting
with more in flight is exactly what floods a one-slot server whose answers take a quarter of the timeout. So a
fresh client's first latency is mostly idle: 512 requests at 64 in flight take nine latencies instead of eight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["INITIAL_IN_FLIGHT", "AdaptiveLimit"]

#: Requests in flight before the first answer comes back.
INITIAL_IN_FLIGHT = 4
#: An answer that took more than this share of the timeout, and more than this many times the fastest answer,
#: means the server queues requests: halve them before any times out.
_SLOW, _QUEUED = 0.5, 2.0
#: Slow start may end at once when max_concurrency answers as slow as the slowest so far fit in this share of the
#: timeout.
_NO_QUEUE_RISK = 0.25


class AdaptiveLimit:
    """The requests that may be in flight now (:attr:`current`, between 1 and :attr:`limit`), and those that are
    (:attr:`active`); :attr:`lowest` is the fewest it ever allowed, for the report."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = min(limit, INITIAL_IN_FLIGHT)
        self.active = 0
        self.working_count = 0
        self.lowest = limit
        self._slow_start = True
        self._answers = 0
        self._cut_at = float("-inf")  # when the limit was last cut (time.monotonic())
        self._fastest = float("inf")
        self._slowest = 0.0
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # a place freed or added: slot() waits on it
        self._idle = threading.Condition(lock)  # no work left: drain() waits on it

    @contextmanager
    def slot(self, deadline: float | None = None) -> Iterator[None]:
        """Hold one of the :attr:`current` places; ``TimeoutError`` if none frees before ``deadline``
        (a :func:`time.monotonic` time; ``None``: wait as long as it takes)."""
        with self._cond:
            while self.active >= self.current:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._cond.notify()  # a wake-up this waiter may have taken goes to the next one
                    raise TimeoutError("no request slot became free before the deadline")
                self._cond.wait(left)
            self.active += 1
        try:
            yield
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify()  # one place freed: one waiter (waking all of them costs CPU at 64 in flight)

    def timed_out(self) -> None:
        with self._cond:
            self._cut()

    def overloaded(self, sent: float) -> None:
        """The server answered a request sent at ``sent`` (:func:`time.monotonic`) with "over capacity": halve
        what is in flight, unless the limit was already cut after that request went out."""
        with self._cond:
            if sent >= self._cut_at:
                self._cut()

    def _cut(self) -> None:  # with the lock held
        self.current = max(1, self.current // 2)
        self.lowest = min(self.lowest, self.current)
        self._slow_start = False
        self._answers = 0
        self._cut_at = time.monotonic()

    def answered(self, elapsed: float, timeout: float) -> None:
        """An answer came back after ``elapsed`` seconds (of a ``timeout``)."""
        with self._cond:
            self._fastest = min(self._fastest, elapsed)
            self._slowest = max(self._slowest, elapsed)
            if elapsed > timeout * _SLOW and elapsed > self._fastest * _QUEUED:
                # far slower than the fastest answer, and half-way to a timeout: the server is queueing them
                self._cut()
                return
            if self.current >= self.limit:
                return
            self._answers += 1
            if self._slow_start and self._slowest * self.limit <= timeout * _NO_QUEUE_RISK:
                grown, self._slow_start = self.limit - self.current, False  # no queue could time anything out
            elif self._slow_start or self._answers >= self.current:
                grown = 1
            else:
                return
            self.current, self._answers = self.current + grown, 0
            self._cond.notify(grown)

    @contextmanager
    def working(self) -> Iterator[None]:
        """Count a piece of work (a request, its retries and what is done with its answer) for :meth:`drain`."""
        with self._cond:
            self.working_count += 1
        try:
            yield
        finally:
            with self._cond:
                self.working_count -= 1
                if not self.working_count:
                    self._idle.notify_all()

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the work in progress to finish; how much is still going."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.working_count and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            return self.working_count
