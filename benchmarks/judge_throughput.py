"""DermBench judge throughput: 64-way concurrency against sequential, and what a second run costs.

A loopback OpenAI-compatible server (dermtrl.testing.FakeOpenAIServer, in its own process like a real vLLM
server) answers every judge request after a fixed latency (100 ms). The same judge code runs 512 cases with
``max_concurrency=64`` and, for the sequential baseline, the first 64 cases with ``max_concurrency=1``
(512 x 100 ms would take 51 s; the per-case times are compared side by side in one run). Targets, printed
last, met or not: speed-up >= 54x (0.85 of the ideal 64x) and at most 1 ms of the judge process's CPU per call
(everything the process does: prompts, client, cache, records). Then the same bench runs again: resuming from
its JSONL it must make 0 calls, and a fresh output file with the same response cache must make 0 calls too.
The ratio needs free cores: on a machine shared with other work it measures the load as much as the client.

A fresh client keeps ``INITIAL_IN_FLIGHT`` requests in flight until its first answer shows how slow the server is
(dermtrl.llm.concurrency: what keeps a one-slot server from being flooded), so its first latency is mostly idle:
512 cases at 64 take nine latencies instead of eight, and the printed ceiling (56.9x) is the most any client
with that protection can reach here, with no other overhead at all. That first latency is paid once per run, so
a second fresh client judges the official release's size (4,000 references, ``--official-cases``): there the
ceiling is 62.5x and the run shows the client's overhead in steady state. Targets are printed for both.

    python benchmarks/judge_throughput.py [--cases 512] [--official-cases 4000] [--sequential-cases 64]
                                          [--latency 0.1]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _docs import add_write_docs_argument, write_console_docs  # noqa: E402  (benchmarks/ is on sys.path)
from rich.console import Console
from rich.table import Table

from dermtrl.bench import DermBench
from dermtrl.cases.synthetic import generate_case
from dermtrl.llm.client import ClientConfig
from dermtrl.llm.concurrency import INITIAL_IN_FLIGHT

_SERVER = """
import sys, time
from dermtrl.testing import FakeOpenAIServer
server = FakeOpenAIServer(latency=float(sys.argv[1])).start()
print(server.base_url, flush=True)
sys.stdin.read()  # serve until the parent closes our stdin
server.stop()
"""


def cases(n: int) -> tuple[list[dict], dict[str, list[dict]]]:
    rows, candidates = [], []
    for i in range(n):
        case = generate_case(i, seed=0)
        rows.append({"case_id": case["case_id"], "reference": case["reference"], "category": case["category"]})
        # Synthetic texts repeat across cases; the case id makes every prompt unique, so every case is a real call.
        candidates.append({"case_id": case["case_id"], "text": f"[{case['case_id']}] {case['narrative']}"})
    return rows, {"synthetic-narratives": candidates}


TARGET_SHARE, TARGET_CPU_MS = 0.85, 1.0


def fresh_client_ceiling(cases: int, concurrency: int) -> float:
    """The speed-up of a client that, as ours, keeps ``INITIAL_IN_FLIGHT`` requests in flight for the first latency:
    the fewest latencies ``t`` with ``initial * t + (concurrency - initial) * (t - 1) >= cases``, against
    ``cases`` sequential ones."""
    initial = min(INITIAL_IN_FLIGHT, concurrency)
    latencies = math.ceil((cases + concurrency - initial) / concurrency)
    return cases / latencies


def timed_judge(base_url: str, rows, candidates, concurrency: int, out: Path, cache: Path) -> tuple[float, dict]:
    config = ClientConfig(base_url=base_url, model="judge", max_concurrency=concurrency, cache_path=str(cache))
    with DermBench(config, progress=False) as bench:
        start, cpu = time.perf_counter(), time.process_time()
        records = bench.judge(rows, candidates, out)
        elapsed = time.perf_counter() - start
        usage = {**bench.usage.as_dict(), "cpu_s": time.process_time() - cpu}
    failed = sum(r["status"] != "scored" for r in records)
    if len(records) != len(rows) or failed:
        raise SystemExit(f"benchmark run is broken: {len(records)} records for {len(rows)} cases, {failed} failed")
    return elapsed, usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=512)
    parser.add_argument("--sequential-cases", type=int, default=64, help="cases for the sequential baseline")
    parser.add_argument("--latency", type=float, default=0.1, help="server latency per call, seconds")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--official-cases", type=int, default=4000,
                        help="cases of the second concurrent run, the official release's size (0: skip it)")
    add_write_docs_argument(parser)
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120, record=True)

    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(args.latency)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        rows, candidates = cases(args.cases)
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            # Warm-up (imports, first connections) on other cases, so neither timed run pays for it.
            warm_rows, warm = cases(args.cases + 8)
            timed_judge(base_url, warm_rows[-8:], {"warm-up": warm["synthetic-narratives"][-8:]}, 8,
                        tmp_path / "warm.jsonl", tmp_path / "warm.sqlite")

            k = args.sequential_cases
            seq_time, _ = timed_judge(base_url, rows[:k], {m: c[:k] for m, c in candidates.items()}, 1,
                                      tmp_path / "seq.jsonl", tmp_path / "seq.sqlite")
            out, cache = tmp_path / "judgments.jsonl", tmp_path / "cache.sqlite"
            conc_time, first = timed_judge(base_url, rows, candidates, args.concurrency, out, cache)
            resume_time, resumed = timed_judge(base_url, rows, candidates, args.concurrency, out, cache)
            cached_time, cached = timed_judge(base_url, rows, candidates, args.concurrency,
                                              tmp_path / "judgments-again.jsonl", cache)
            big = None
            if args.official_cases:
                big_rows, big_candidates = cases(args.official_cases)
                big = timed_judge(base_url, big_rows, big_candidates, args.concurrency, tmp_path / "official.jsonl",
                                  tmp_path / "official.sqlite")
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)

    seq_per_case = seq_time / k
    conc_per_case = conc_time / args.cases
    speedup = seq_per_case / conc_per_case
    cpu_ms = first["cpu_s"] / max(first["calls"], 1) * 1000
    table = Table(title=f"DermBench judge throughput ({args.latency * 1000:.0f} ms latency per call)")
    for name in ("run", "cases", "concurrency", "wall s", "ms / case", "speed-up", "CPU ms / call", "API calls",
                 "cache hits"):
        table.add_column(name, justify="left" if name == "run" else "right")
    table.add_row("sequential (first cases)", str(k), "1", f"{seq_time:.2f}", f"{seq_per_case * 1000:.1f}",
                  "1.0x", "", str(k), "0")
    table.add_row("concurrent, first run", str(args.cases), str(args.concurrency), f"{conc_time:.2f}",
                  f"{conc_per_case * 1000:.2f}", f"{speedup:.1f}x", f"{cpu_ms:.2f}", str(first["calls"]),
                  str(first["cache_hits"]))
    runs = [(f"{args.cases} cases", args.cases, speedup, cpu_ms)]
    if big is not None:
        big_time, big_usage = big
        big_speedup = seq_per_case / (big_time / args.official_cases)
        big_cpu_ms = big_usage["cpu_s"] / max(big_usage["calls"], 1) * 1000
        runs.append((f"{args.official_cases} cases, the official release's size", args.official_cases, big_speedup,
                     big_cpu_ms))
        table.add_row("concurrent, official size", str(args.official_cases), str(args.concurrency), f"{big_time:.2f}",
                      f"{big_time / args.official_cases * 1000:.2f}", f"{big_speedup:.1f}x", f"{big_cpu_ms:.2f}",
                      str(big_usage["calls"]), str(big_usage["cache_hits"]))
    table.add_row("again: resume from JSONL", str(args.cases), str(args.concurrency), f"{resume_time:.2f}",
                  "", "", "", str(resumed["calls"]), str(resumed["cache_hits"]))
    table.add_row("again: new file, same cache", str(args.cases), str(args.concurrency), f"{cached_time:.2f}",
                  "", "", "", str(cached["calls"]), str(cached["cache_hits"]))
    console.print(table)
    console.print(f"Sequential baseline measured on the first {k} of {args.cases} cases ({k} x "
                  f"{args.latency * 1000:.0f} ms); the speed-up compares time per case, both measured in this run. "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end.")
    console.print(f"second run API calls: {resumed['calls']} (resume from JSONL), "
                  f"{cached['calls']} (new output file, same response cache)")
    goal = TARGET_SHARE * args.concurrency
    for label, n, ratio, cpu in runs:
        ceiling = fresh_client_ceiling(n, args.concurrency)
        console.print(f"ceiling at {n} cases: a fresh client keeps {min(INITIAL_IN_FLIGHT, args.concurrency)} "
                      f"requests in flight until its first answer, so they take {round(n / ceiling)} latencies, "
                      f"not {n / args.concurrency:g}: at most {ceiling:.1f}x with no other overhead")
        console.print(f"target ({label}): speed-up of {args.concurrency}-way concurrency over sequential "
                      f"{ratio:.1f}x (ideal {args.concurrency}x, {ratio / ceiling:.0%} of the ceiling), goal >= "
                      f"{goal:.0f}x: {'met' if ratio >= goal else 'NOT met'}")
        console.print(f"target ({label}): judge process CPU {cpu:.3f} ms per call, goal <= {TARGET_CPU_MS:g} ms: "
                      f"{'met' if cpu <= TARGET_CPU_MS else 'NOT met'}")
    if args.write_docs:
        write_console_docs("judge_throughput", "DermBench judge throughput", console)


if __name__ == "__main__":
    main()
