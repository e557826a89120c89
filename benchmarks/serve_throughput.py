"""Throughput of `dermtrl serve`: dynamic batching against batch size 1, 16 concurrent clients, one run.

Both servers serve the same evaluator (the demo adapter on the tiny base unless --adapter/--model say otherwise) on
127.0.0.1; every client sends its requests one after another through the `openai` client (a chat completion with
the image and the narrative), so up to 16 requests wait at once. The table gives requests per second, the median and
95th-percentile latency, the batch sizes the server ran and the windows they waited; the ratio and the target
(>= 3x) come last. The batching server runs with `dermtrl serve`'s default window (a tenth of one generate call,
measured as it serves: dermtrl.dermeval.serve) unless --max-wait-ms fixes one.

    python benchmarks/serve_throughput.py                      # 16 clients x 4 requests per mode
    python benchmarks/serve_throughput.py --requests 2 --max-new-tokens 64   # a quick check
    python benchmarks/serve_throughput.py --write-docs         # and write its section of docs/source/benchmarks.md
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import threading
import time
from pathlib import Path

from _docs import add_write_docs_argument, recording_stdout, write_text_docs  # noqa: E402  (benchmarks/ is on sys.path)
from _shared import demo_adapter  # noqa: E402

TARGET = 3.0


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def run_mode(evaluator, cases, *, batch: int, wait_ms: float | None, clients: int, requests: int) -> dict:
    """Serve with ``batch`` as the largest batch; ``clients`` threads each send ``requests`` chat completions."""
    from openai import OpenAI

    from dermtrl.dermeval.serve import DermEvalServer, ServeConfig

    config = ServeConfig(max_batch_size=batch, max_wait_ms=wait_ms, max_queue=4 * clients, request_timeout_s=600)
    latencies: list[float] = []
    errors: list[str] = []
    with DermEvalServer(evaluator, config) as server:
        def client(k: int) -> None:
            api = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=600)
            for j in range(requests):
                image, narrative = cases[(k * requests + j) % len(cases)]
                start = time.perf_counter()
                try:
                    api.chat.completions.create(model="dermeval", messages=[{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}},
                        {"type": "text", "text": narrative}]}])
                    latencies.append(time.perf_counter() - start)
                except Exception as exc:  # noqa: BLE001 - counted and shown, the run goes on
                    errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        batches = list(server.batcher.batches)
        windows = list(server.batcher.windows)
    latencies.sort()
    return {"batch": batch, "done": len(latencies), "errors": errors, "wall": wall, "rps": len(latencies) / wall,
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else float("nan"),
            "mean_batch": statistics.mean(batches) if batches else 0.0, "batches": len(batches),
            "window_ms": statistics.median(windows) * 1000 if windows else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="requests per client per mode")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the batching server's largest batch")
    parser.add_argument("--max-wait-ms", type=float, default=None,
                        help="the batching server's window (default: the server's, a tenth of one generate call)")
    parser.add_argument("--adapter", default=None, help="default: the Space's demo adapter")
    parser.add_argument("--model", default=None, help="base model (default: the adapter's base)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="generation budget (default: the one recorded beside the adapter)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    add_write_docs_argument(parser)
    args = parser.parse_args()

    import torch

    from dermtrl.cases.splits import TEST_START
    from dermtrl.cases.synthetic import generate_case
    from dermtrl.dermeval.evaluator import DermEval

    if args.threads:
        torch.set_num_threads(args.threads)
    adapter = args.adapter or (None if args.model else str(demo_adapter()))
    evaluator = DermEval.from_pretrained(args.model, adapter, max_new_tokens=args.max_new_tokens, device=args.device)
    cases = [(png_b64(c["image"]), c["narrative"]) for c in (generate_case(TEST_START + i) for i in range(32))]
    shown = Path(evaluator.model_id).name if Path(evaluator.model_id).exists() else evaluator.model_id  # no local path
    setup = (f"DermEval {shown} on {evaluator.model.device}, max_new_tokens {evaluator.max_new_tokens}; "
             f"{args.clients} clients x {args.requests} requests per mode")
    print(setup, flush=True)
    run_mode(evaluator, cases, batch=args.max_batch_size, wait_ms=args.max_wait_ms, clients=2, requests=1)  # warm-up
    rows = [run_mode(evaluator, cases, batch=b, wait_ms=args.max_wait_ms if b > 1 else 0.0, clients=args.clients,
                     requests=args.requests) for b in (1, args.max_batch_size)]
    window = "fixed" if args.max_wait_ms is not None else "1/10 generate"
    with recording_stdout() as printed:
        print(f"\n{'mode':<30}{'requests':>9}{'errors':>8}{'wall s':>9}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}"
              f"{'batches':>9}{'mean batch':>12}{'window ms':>11}")
        for r in rows:
            mode = "batch size 1" if r["batch"] == 1 else f"dynamic (<= {r['batch']}, {window})"
            print(f"{mode:<30}{r['done']:>9}{len(r['errors']):>8}{r['wall']:>9.2f}{r['rps']:>8.2f}{r['p50']:>8.2f}"
                  f"{r['p95']:>8.2f}{r['batches']:>9}{r['mean_batch']:>12.1f}"
                  f"{'' if r['batch'] == 1 else format(r['window_ms'], '.0f'):>11}")
        for r in rows:
            for e in r["errors"][:3]:
                print(f"  error (batch {r['batch']}): {e}")
        print("window ms: the median window the batches waited for more items")
        ratio = rows[1]["rps"] / rows[0]["rps"] if rows[0]["rps"] else float("nan")
        print(f"\nthroughput ratio, dynamic batching / batch size 1: {ratio:.2f}x")
        print(f"target: >= {TARGET:g}x ... {'met' if ratio >= TARGET else 'NOT met'}")
    if args.write_docs:
        write_text_docs("serve_throughput", "`dermtrl serve`: dynamic batching against batch size 1",
                        setup + "\n" + printed.getvalue())


if __name__ == "__main__":
    main()
