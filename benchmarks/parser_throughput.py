"""SOREB's reward with the LLM parser: one step's parser time at batch 8, concurrent against sequential.

The reward (dermtrl.rewards.ScoreAlignmentReward, paper eq. 2) parses each completion by rules first and asks the
LLM parser (Figure 4) for what the rules missed. A loopback OpenAI-compatible server in its own process answers
every parser request after a fixed latency (200 ms). Each step's 8 completions are free text the rules cannot
read, so every one needs the parser: the worst case. The same reward runs the same steps twice, once with its
parser calls one at a time (max_concurrency=1, as the reward did before) and once concurrently (the client's
max_concurrency, 8); the table shows both, then the ratio and its target (>= 4x), met or not.

    python benchmarks/parser_throughput.py [--batch 8] [--steps 5] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _docs import add_write_docs_argument, write_console_docs  # noqa: E402  (benchmarks/ is on sys.path)
from rich.console import Console
from rich.table import Table

from dermtrl.dimensions import DIMENSIONS
from dermtrl.llm.client import ClientConfig, LLMClient
from dermtrl.rewards import ScoreAlignmentReward

_SERVER = """
import sys
from dermtrl.testing import FakeOpenAIServer
server = FakeOpenAIServer(latency=float(sys.argv[1])).start()
print(server.base_url, flush=True)
sys.stdin.read()  # serve until the parent closes our stdin
server.stop()
"""
TARGET = 4.0


def step(index: int, batch: int) -> tuple[list[str], list[str], list[dict[str, float]]]:
    """One step's prompts, free-text completions (no score the rules can read) and expert scores."""
    completions = [f"Step {index}, sample {j}: the narrative names the likely diagnosis and gives sound advice, "
                   "though it says little about the lesion's border." for j in range(batch)]
    experts = [dict.fromkeys(DIMENSIONS, 4.0) for _ in range(batch)]
    return ["prompt"] * batch, completions, experts


def timed_steps(reward: ScoreAlignmentReward, steps: int, batch: int, offset: int) -> list[float]:
    times = []
    for i in range(steps):
        prompts, completions, experts = step(offset + i, batch)  # new texts each step: every call is a real one
        start = time.perf_counter()
        rewards = reward(prompts, completions, expert_scores=experts)
        times.append(time.perf_counter() - start)
        if any(r is None for r in rewards) or any(set(p.sources.values()) != {"llm"} for p in reward.last_parsed):
            raise SystemExit("benchmark run is broken: the LLM parser did not score every completion")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="completions per step")
    parser.add_argument("--steps", type=int, default=5, help="steps timed per mode (the median is reported)")
    parser.add_argument("--latency", type=float, default=0.2, help="parser server latency per call, seconds")
    add_write_docs_argument(parser)
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120, record=True)

    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(args.latency)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        config = ClientConfig(base_url=base_url, model="parser", max_concurrency=args.batch)
        with LLMClient(config) as client:
            timed_steps(ScoreAlignmentReward(client), 1, args.batch, offset=10_000)  # warm-up: imports, connections
            sequential = timed_steps(ScoreAlignmentReward(client, max_concurrency=1), args.steps, args.batch, 0)
            batched = timed_steps(ScoreAlignmentReward(client), args.steps, args.batch, args.steps)
            calls = client.usage.calls
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)

    seq, conc = statistics.median(sequential), statistics.median(batched)
    ratio = seq / conc
    table = Table(title=f"SOREB reward, LLM parser at {args.latency * 1000:.0f} ms per call, batch {args.batch}")
    table.add_column("mode", justify="left")
    for name in ("parser calls", "steps", "median s / step", "min s / step", "max s / step", "ideal s / step"):
        table.add_column(name, justify="right")
    ideal_seq, ideal_conc = args.batch * args.latency, args.latency
    for mode, times, ideal in (("sequential (one at a time)", sequential, ideal_seq),
                               (f"concurrent (up to {args.batch})", batched, ideal_conc)):
        table.add_row(mode, str(args.batch * args.steps), str(args.steps), f"{statistics.median(times):.3f}",
                      f"{min(times):.3f}", f"{max(times):.3f}", f"{ideal:.3f}")
    console.print(table)
    console.print(f"parser calls made in all (warm-up included): {calls}")
    console.print(f"speed-up of the concurrent parser over sequential: {ratio:.1f}x (ideal {args.batch}x; "
                  f"target >= {TARGET:g}x: {'met' if ratio >= TARGET else 'NOT met'})")
    if args.write_docs:
        write_console_docs("parser_throughput", "SOREB reward: LLM parser throughput", console)


if __name__ == "__main__":
    main()
