"""Rerank server throughput and latency: dynamic batching on vs off, concurrency 1 / 8 / 32, and the
HTTP path's overhead over an in-process call.

    python eval/bench_serving.py --output eval/results/serving_cpu.json          # 20 DL19 passages
    python eval/bench_serving.py --quick                                         # a smoke run

Every request reranks the BM25 top-``--passages`` DL19 passages of one judged query (``--queries``
distinct queries, cycled), single-pass scoring by default, through ``rerank serve`` started as a
subprocess on 127.0.0.1 (one server per batching mode, the same model and options). Clients are
``--concurrency`` asyncio tasks on one httpx.AsyncClient, each sending its next request as soon as
the last one is answered (closed loop). One warm-up round per server is discarded. The in-process
baseline calls ``Reranker.rerank`` in this process on the same requests, alternating one call with
one HTTP request to the batching-off server (never both at once), so the overhead figure compares
pairs that saw the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

BATCHING_OFF = {"max_batch_size": 1, "max_wait_ms": 0.0}  # every request its own model call, no waiting


def load_requests(collection: str, queries: int, passages: int) -> list[tuple[str, list[str]]]:
    """(query, BM25 top-``passages`` texts) for the first ``queries`` judged queries."""
    from rerank.data.collection import default_run_path, load_collection, read_run

    coll = load_collection(collection)
    run_path = default_run_path(coll)
    if run_path is None:
        raise SystemExit(f"{collection} has no first-stage run (run.bm25.trec)")
    run = read_run(run_path, depth=passages)
    qids = [q for q in coll.queries if q in coll.qrels and len(run.get(q, [])) >= passages][:queries]
    return [(coll.queries[q], [coll.corpus[d] for d in run[q]]) for q in qids]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(latencies: list[float], wall: float, errors: int) -> dict:
    return {
        "requests": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 3) if wall else None,
        "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, batching: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "rerank.serving.server",
        "--port",
        str(port),
        "--scoring",
        args.scoring,
        "--max_passage_tokens",
        str(args.max_passage_tokens),
        "--batch_size",
        str(args.batch_size),
        "--max_batch_size",
        str(batching["max_batch_size"]),
        "--max_wait_ms",
        str(batching["max_wait_ms"]),
        "--max_concurrent",
        "4096",
        "--log_level",
        "warning",
    ]
    if args.model:
        cmd += ["--model", args.model]
    if args.device:
        cmd += ["--device", args.device]
    if args.pruning:
        cmd += ["--pruning", args.pruning]
    proc = subprocess.Popen(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not come up in 600 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def drive(url: str, requests: list[tuple[str, list[str]]], concurrency: int, total: int) -> dict:
    """Closed loop: ``concurrency`` clients send ``total`` requests between them."""
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index, errors
        while next_index < total:
            i = next_index
            next_index += 1
            query, docs = requests[i % len(requests)]
            start = time.perf_counter()
            resp = await http.post(url + "/v1/rerank", json={"model": "lazyrank", "query": query, "documents": docs})
            latencies.append(time.perf_counter() - start)
            if resp.status_code != 200 or len(resp.json()["results"]) != len(docs):
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summary(latencies, wall, errors)


def load_in_process(args: argparse.Namespace):
    from rerank import PruningConfig, Reranker

    return Reranker.from_pretrained(
        args.model,
        device=args.device,
        scoring=args.scoring,
        max_passage_tokens=args.max_passage_tokens,
        batch_size=args.batch_size,
        pruning=PruningConfig.from_spec(args.pruning) if args.pruning else None,
    )


def paired_overhead(rr, url: str, requests: list[tuple[str, list[str]]], total: int) -> tuple[dict, dict]:
    """In-process call and HTTP call alternated on the same request, one at a time.

    Alternating pairs expose both paths to the same machine load (this CPU is shared), so the
    per-pair difference isolates what HTTP, JSON and the worker queue add.
    """
    local, remote = [], []
    body = lambda q, d: {"model": "lazyrank", "query": q, "documents": d}  # noqa: E731
    with httpx.Client(timeout=600) as http:
        for query, docs in requests[:2]:  # warm-up of both paths
            rr.rerank(query, docs)
            http.post(url + "/v1/rerank", json=body(query, docs))
        start = time.perf_counter()
        for i in range(total):
            query, docs = requests[i % len(requests)]
            t = time.perf_counter()
            rr.rerank(query, docs)
            local.append(time.perf_counter() - t)
            t = time.perf_counter()
            resp = http.post(url + "/v1/rerank", json=body(query, docs))
            remote.append(time.perf_counter() - t)
            assert resp.status_code == 200, resp.text
        wall = time.perf_counter() - start
    diffs = sorted(1000 * (http - own) for own, http in zip(local, remote))
    overhead = {
        "pairs": total,
        "median_ms": round(statistics.median(diffs), 2),
        "p90_ms": round(percentile(diffs, 0.9), 2),
        "ratio_p50": round(percentile(remote, 0.5) / percentile(local, 0.5), 4),
    }
    return summary(local, wall / 2, 0), {"http": summary(remote, wall / 2, 0), **overhead}


def requests_for(args: argparse.Namespace, concurrency: int) -> int:
    return max(args.min_requests, args.rounds * concurrency)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", default="../shared/data/msmarco-dl19")
    parser.add_argument("--model", default=None, help="model path or hub id (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--scoring", default="single_pass")
    parser.add_argument("--pruning", default=None)
    parser.add_argument("--queries", type=int, default=20, help="distinct requests (DL19 judged queries), cycled")
    parser.add_argument("--passages", type=int, default=20, help="documents per request (BM25 top-N)")
    parser.add_argument("--max_passage_tokens", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--rounds", type=int, default=4, help="requests per level = max(min-requests, rounds x concurrency)"
    )
    parser.add_argument("--min_requests", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per forward pass (both modes)")
    parser.add_argument("--max_batch_size", type=int, default=8, help="batching on: requests per batched call")
    parser.add_argument("--max_wait_ms", type=float, default=10.0, help="batching on: wait for batch mates")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 6 queries x 3 passages of 24 tokens, few requests per level"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSON file (default: eval/results/serving_cpu.json; eval/results/serving_quick.json with --quick)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.queries, args.passages, args.max_passage_tokens = 6, 3, 24
        args.rounds, args.min_requests = 1, 6
    output = Path(args.output or ("eval/results/serving_quick.json" if args.quick else "eval/results/serving_cpu.json"))
    modes = {
        "batching_off": BATCHING_OFF,
        "batching_on": {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms},
    }

    requests = load_requests(args.collection, args.queries, args.passages)
    print(f"{len(requests)} requests of {args.passages} passages; scoring={args.scoring}", flush=True)
    result: dict = {
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "http": {},
    }
    rr = load_in_process(args)
    for mode, batching in modes.items():
        proc, url = start_server(args, batching)
        try:
            if mode == "batching_off":
                result["in_process"], result["http_overhead_c1"] = paired_overhead(
                    rr, url, requests, requests_for(args, 1)
                )
                print(
                    "in-process c=1:", result["in_process"], "\nHTTP overhead:", result["http_overhead_c1"], flush=True
                )
            asyncio.run(drive(url, requests, 2, 2))  # warm-up
            result["http"][mode] = {"batching": batching}
            for c in args.concurrency:
                result["http"][mode][str(c)] = asyncio.run(drive(url, requests, c, requests_for(args, c)))
                print(f"{mode} c={c}:", result["http"][mode][str(c)], flush=True)
        finally:
            stop_server(proc)
    base = result["in_process"]
    rows = [("in-process", "-", 1, base)] + [
        (mode, "on" if mode == "batching_on" else "off", int(c), stats)
        for mode, per in result["http"].items()
        for c, stats in per.items()
        if c != "batching"
    ]
    print("\n| path | dynamic batching | concurrency | requests | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name, on, c, s in rows:
        path = "in-process" if name == "in-process" else "HTTP"
        print(
            f"| {path} | {on} | {c} | {s['requests']} | {s['requests_per_s']} | {s['p50_ms']} | {s['p99_ms']} "
            f"| {s['errors']} |"
        )
    o = result["http_overhead_c1"]
    print(
        f"\nHTTP overhead at concurrency 1 (batching off, {o['pairs']} alternating pairs): median "
        f"{o['median_ms']} ms per request, p90 {o['p90_ms']} ms; p50 latency {o['ratio_p50']}x the in-process call"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    return result


if __name__ == "__main__":
    main()
