"""Training cost of the default model on this machine: LoRA vs full fine-tuning, 1 vs 2 processes.

Runs ``rerank.training.train`` for a few steps per setting (2 processes through ``accelerate launch`` with
configs/accelerate/cpu_ddp.yaml or cpu_zero2.yaml) and collects each run's train_metrics.json:
mean step time after the first (warm-up) step, tokens/s (all ranks), peak RSS of rank 0.

    .venv/bin/python eval/train_throughput.py --train_file runs/train_and_eval/wikiqa-train.embed.jsonl \\
        --steps 5 --out eval/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (accelerate config or None, extra rerank.training.train overrides)
    "lora-1proc": (None, []),
    "lora-2proc-ddp": ("configs/accelerate/cpu_ddp.yaml", []),
    "full-1proc": (None, ["--use_lora", "false", "--learning_rate", "1e-5"]),
    "full-2proc-ddp": ("configs/accelerate/cpu_ddp.yaml", ["--use_lora", "false", "--learning_rate", "1e-5"]),
    "lora-2proc-zero2": ("configs/accelerate/cpu_zero2.yaml", []),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train_file", required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS))
    ap.add_argument("--work", default="runs/train_throughput")
    ap.add_argument("--out", default="eval/results/train_throughput.json")
    args = ap.parse_args(argv)
    results = {
        "setup": {
            "steps": args.steps,
            "per_device_batch": 1,
            "grad_accum": 1,
            "dtype": "float32",
            "cpus": os.cpu_count(),
            "load_at_start": round(os.getloadavg()[0], 2),
        }
    }
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(REPO / args.work / "torch_ext"), HF_HUB_OFFLINE="1")
    for name in args.settings:
        accel, extra = SETTINGS[name]
        out = REPO / args.work / name
        train = [
            "-m",
            "rerank.training.train",
            "configs/train/default-cpu.yaml",
            "--train_file",
            args.train_file,
            "--output_dir",
            str(out),
            "--max_steps",
            str(args.steps),
            "--save_strategy",
            "no",
            "--gradient_accumulation_steps",
            "1",
            "--warmup_steps",
            "0",
            "--logging_steps",
            "1",
            *extra,
        ]
        cmd = [sys.executable, *(["-m", "accelerate.commands.launch", "--config_file", accel] if accel else []), *train]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        entry = {"rc": proc.returncode, "terminate_abort": "terminate called" in log}
        if proc.returncode == 0:
            m = json.loads((out / "train_metrics.json").read_text())
            entry |= {
                k: m[k]
                for k in (
                    "world_size",
                    "distributed_type",
                    "global_step",
                    "first_step_s",
                    "step_s_mean_after_first",
                    "tokens_seen",
                    "tokens_per_s",
                    "peak_memory_mb_rank0",
                )
            }
        else:
            entry["log_tail"] = log[-2000:]
        results[name] = entry
        print(name, json.dumps(entry), flush=True)
        Path(REPO / args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
