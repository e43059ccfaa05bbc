"""Data-parallel `rerank eval` on CPU: 2 processes x 1 thread against 1 process x 2 threads.

    .venv/bin/python eval/bench_data_parallel.py --collection ../shared/data/msmarco-dl19 --depth 20 \
        --queries 20 --model base --output eval/results/data_parallel_cpu.json

Runs the same `rerank eval` command twice as fresh subprocesses, on the same 2 cores:

* ``one_process``: ``OMP_NUM_THREADS=2 python -m rerank.cli eval ...`` (torch splits each matmul over 2 threads);
* ``two_processes``: ``OMP_NUM_THREADS=1 accelerate launch --config_file configs/accelerate/cpu_2proc.yaml
  -m rerank.cli eval ...`` (each process ranks every other query).

Wall time includes process start and model loading (what a user waits for); ``rerank_seconds``
is the busiest process's summed per-query ranking time from rankings.jsonl (``rerank_seconds_by_process``
per process), i.e. the work without start-up. It also checks the two runs agree: run.trec byte for byte
and every rankings.jsonl record
apart from its wall-clock fields. The machine's load average is recorded, since other jobs on the
same cores slow both setups.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"


def eval_args(args: argparse.Namespace, output_dir: Path) -> list[str]:
    cmd = [
        "eval",
        "--collection",
        args.collection,
        "--depth",
        str(args.depth),
        "--limit_queries",
        str(args.queries),
        "--model",
        args.model,
        "--output_dir",
        str(output_dir),
    ]
    if args.scoring:
        cmd += ["--scoring", args.scoring]
    return cmd


def run_setup(name: str, cmd: list[str], threads: int, output_dir: Path, log_dir: Path) -> dict:
    """Run one setup from scratch and time it (a fresh output folder: nothing is resumed)."""
    shutil.rmtree(output_dir, ignore_errors=True)
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("ACCELERATE_USE_CPU", None)
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (log_dir / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{name} failed (rc {proc.returncode}); log: {log_dir / f'{name}.log'}\n"
            f"{(proc.stdout + proc.stderr)[-2000:]}"
        )
    metrics = json.loads((output_dir / "metrics.json").read_text())
    records = [json.loads(line) for line in (output_dir / "rankings.jsonl").read_text().splitlines()]
    # A fresh run gives query i (in rankings.jsonl order) to process i % N, so each process's share is known.
    n = metrics["processes"]
    by_process = [round(sum(r["stats"]["total_seconds"] for r in records[k::n] if r["stats"]), 3) for k in range(n)]
    return {
        "command": cmd,
        "omp_num_threads": threads,
        "processes": metrics["processes"],
        "wall_seconds": round(wall, 3),
        "queries": metrics["queries"],
        "wall_seconds_per_query": round(wall / metrics["queries"], 4),
        "rerank_seconds_by_process": by_process,
        "rerank_seconds": max(by_process),
        "ndcg@10": metrics["ndcg@10"],
        "seconds_per_query_in_process": metrics["seconds_per_query"],
    }


def same_output(a: Path, b: Path) -> dict:
    from rerank.distributed import without_timings

    lines_a = (a / "rankings.jsonl").read_text().splitlines()
    lines_b = (b / "rankings.jsonl").read_text().splitlines()
    return {
        "run_trec_bytes_equal": (a / "run.trec").read_bytes() == (b / "run.trec").read_bytes(),
        "rankings_equal_without_timings": [without_timings(line) for line in lines_a]
        == [without_timings(line) for line in lines_b],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", default="../shared/data/msmarco-dl19")
    parser.add_argument("--depth", type=int, default=20, help="first-stage candidates reranked per query")
    parser.add_argument("--queries", type=int, default=20, help="the first N judged queries (sorted by qid)")
    parser.add_argument("--model", default="base", help="'base' = raw SmolLM2-135M-Instruct; a path or hub id")
    parser.add_argument("--scoring", default=None, help="generate | single_pass | head (default: the model's)")
    parser.add_argument("--work_dir", default="runs/bench_data_parallel", help="output folders and logs of both runs")
    parser.add_argument("--output", default="eval/results/data_parallel_cpu.json")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.collection = str(Path(args.collection).resolve())

    work = (REPO / args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    one_dir, two_dir = work / "one_process", work / "two_processes"
    load_before = os.getloadavg()
    one = run_setup("one_process", [sys.executable, "-m", "rerank.cli", *eval_args(args, one_dir)], 2, one_dir, work)
    two = run_setup(
        "two_processes",
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(CPU_CONFIG),
            "--num_processes",
            "2",
            "-m",
            "rerank.cli",
            *eval_args(args, two_dir),
        ],
        1,
        two_dir,
        work,
    )
    result = {
        "benchmark": "data-parallel rerank eval on CPU: 2 processes x 1 thread vs 1 process x 2 threads",
        "collection": args.collection,
        "depth": args.depth,
        "queries": args.queries,
        "model": args.model,
        "scoring": args.scoring,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "one_process_2_threads": one,
        "two_processes_1_thread": two,
        "speedup_wall": round(one["wall_seconds"] / two["wall_seconds"], 3),
        "same_output": same_output(one_dir, two_dir),
    }
    out = REPO / args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup_wall", "same_output")}, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
