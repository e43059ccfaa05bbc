"""Held-out head loss: does the trained readout rank lists it never saw (vs chance, log 2)?

    .venv/bin/python eval/heldout_head.py --models base=base trained=runs/head/model \\
        --config configs/train/head-cpu.yaml --out eval/results/heldout_head_cpu.json

Rebuilds the training run's held-out split (same labels file, ``eval_fraction`` and seed as the
YAML) and, for every model, scores each held-out list with ``scoring="head"`` in one forward pass.
Reports the weighted RankNet term (log 2 = 0.693 is chance: tied or random scores), pairwise
accuracy against the label order, and the teacher KL term, each a mean over the lists.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    from tqdm import tqdm

    from rerank.engine.passage_head import score_positions
    from rerank.models import load_model_and_tokenizer
    from rerank.prompting.prompts import relevance_token_ids
    from rerank.training.data import ExampleOptions, build_dataset
    from rerank.training.losses.passage_head import PassageHeadLoss
    from rerank.training.train import parse_args, split_heldout

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models",
        nargs="+",
        required=True,
        help="NAME=PATH ('base' = raw SmolLM2-135M-Instruct, 'default' = base + the shipped weights).",
    )
    ap.add_argument(
        "--config", default="configs/train/head-cpu.yaml", help="The training YAML (data, split, objective)."
    )
    ap.add_argument("--limit", type=int, default=None, help="Only the first N held-out lists.")
    ap.add_argument("--out", default="eval/results/heldout_head_cpu.json")
    args = ap.parse_args(argv)
    config = parse_args([args.config, "--output_dir", "/tmp/lazyrank-heldout-unused"])
    targs, head = config.args, config.objective.head
    if targs.eval_fraction <= 0:
        ap.error(f"{args.config} holds out nothing (eval_fraction 0)")
    results = {
        "config": args.config,
        "train_file": targs.train_file,
        "eval_fraction": targs.eval_fraction,
        "chance_rank_loss": round(math.log(2), 4),
        "models": {},
    }
    for spec in args.models:
        name, _, path = spec.partition("=")
        model, tok = load_model_and_tokenizer(None if (path or name) == "default" else path or name)
        options = ExampleOptions(
            max_passage_tokens=targs.max_passage_tokens,
            passage_head=True,
            include_target=False,
            seed=targs.seed,
            max_seq_length=targs.max_seq_length,
        )
        dataset = build_dataset(tok, targs.train_file, options)
        _, heldout = split_heldout(dataset, targs.eval_fraction, targs.seed)
        if args.limit:
            heldout = heldout.select(range(min(args.limit, len(heldout))))
        loss = PassageHeadLoss(head.head_rank_loss, head.head_teacher_weight, head.head_teacher_temperature)
        yes, no = relevance_token_ids(tok)
        rank_terms, kl_terms, correct, pairs = [], [], 0, 0
        for row in tqdm(heldout, desc=name):
            out = score_positions(model, [row["input_ids"]], [row["head_positions"]], yes, no, tok.pad_token_id)
            scores = torch.tensor([out.scores[0]])
            ranks = torch.tensor([row["passage_ranks"]])
            teacher = torch.tensor([row["teacher_scores"]], dtype=torch.float32)
            loss(scores, ranks, teacher)
            rank_terms.append(loss.last_terms["rank_loss"])
            if "teacher_kl" in loss.last_terms and not torch.isnan(teacher).all():
                kl_terms.append(loss.last_terms["teacher_kl"])
            s, r = out.scores[0], row["passage_ranks"]
            for i in range(len(s)):
                for j in range(len(s)):
                    if r[i] < r[j]:
                        pairs += 1
                        correct += s[i] > s[j]
        results["models"][name] = {
            "path": path,
            "lists": len(rank_terms),
            "rank_loss": round(sum(rank_terms) / len(rank_terms), 4),
            "pairwise_accuracy": round(correct / max(1, pairs), 4),
            "teacher_kl": round(sum(kl_terms) / len(kl_terms), 4) if kl_terms else None,
        }
        print(name, results["models"][name])
        del model
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
