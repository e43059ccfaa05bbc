"""The ``rerank`` command: ``demo``, ``eval``, ``labels``, ``train``, ``retrieve``, ``generate-queries``,
``rank-llm``, ``serve``.

    rerank demo                      # rerank the built-in example with the default model
    rerank eval --collection ../shared/data/msmarco-dl19 --depth 20 --strategy full
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m rerank.cli eval ...  # data-parallel
    rerank labels ...                # complete listwise labels (see `rerank labels --help`)
    rerank train configs/train/default-cpu.yaml   # single process; use accelerate launch for more
    rerank retrieve --collection DIR --depth 100 --output run.trec   # BM25 first stage (bm25s)
    rerank generate-queries --collection DIR --output queries.jsonl  # synthetic training queries
    rerank retrieve ... --rank_llm_output requests.jsonl  # the same candidates as rank_llm requests
    rerank rank-llm --input requests.jsonl --output results.jsonl [--prompt rank_zephyr]  # rank_llm files
    rerank serve --port 8000         # Cohere/Jina/TEI-compatible rerank server (see `rerank serve --help`)

A mistake of the user's (a missing or malformed file, a bad line, settings changed on resume, an empty
corpus) prints one line naming it and exits with status 1; `rerank --debug COMMAND ...` (or
LAZYRANK_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# What a user's mistake raises here: files that are missing or malformed (OSError, ValueError naming
# file and line), bad settings (ValueError), unknown ids (KeyError), a missing optional extra
# (ImportError naming it). Anything else is a bug of ours and keeps its traceback.
USER_ERRORS = (ValueError, OSError, KeyError, ImportError)


def eval_main(argv: list[str] | None = None) -> dict:
    """``rerank eval``: rerank a first-stage run and print/write metrics."""
    from transformers import HfArgumentParser

    from rerank.evaluation import EvalConfig, evaluate, format_table

    parser = HfArgumentParser(EvalConfig, prog="rerank eval", description="Rerank a first-stage run and score it.")
    try:
        (cfg,) = parser.parse_args_into_dataclasses(args=sys.argv[2:] if argv is None else argv)
    except (ValueError, TypeError) as exc:  # __post_init__ validation: a usage error, not a crash
        parser.error(str(exc))
    metrics = evaluate(cfg)
    from rerank.distributed import detect, shutdown

    dp = detect()  # the context evaluate used: under `accelerate launch` only the main process reports
    shutdown(dp)
    if not dp.is_main:
        return metrics
    row = {"strategy": cfg.strategy, "depth": cfg.depth, **{k: v for k, v in metrics.items() if k != "config"}}
    print(
        format_table(
            [row],
            [
                "strategy",
                "scoring",
                "pruning",
                "depth",
                "queries",
                "ndcg@10",
                "rr@10",
                "recall@100",
                "seconds_per_query",
                "prompt_tokens_per_query",
                "generated_tokens_per_query",
                "llm_calls_per_query",
            ],
        )
    )
    print(f"wrote {cfg.output_dir}/metrics.json and run.trec")
    return metrics


def demo_main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(prog="rerank demo", description="Rerank the built-in example.")
    parser.add_argument(
        "--model",
        default=None,
        help="model path or hub id (default: the shipped reranker; 'base' = raw SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--top_k", type=int, default=None, help="return only the best k (generate: decode only k)")
    parser.add_argument(
        "--scoring",
        default=None,
        choices=["generate", "single_pass", "head"],
        help="default: what the model recommends (head for the shipped reranker)",
    )
    args = parser.parse_args(argv)
    from rerank.cli.demo import run_demo

    print(run_demo(args.model, args.top_k, args.scoring))


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (a KeyError's key unquoted)."""
    text = (
        exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    )
    return " ".join((text or type(exc).__name__).split())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("LAZYRANK_DEBUG", "") not in ("", "0")
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    try:
        return _dispatch(argv)
    except USER_ERRORS as exc:
        if debug:
            raise
        command = argv[0] if argv else ""
        print(
            f"rerank {command}: error: {_one_line(exc)} (--debug or LAZYRANK_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def _dispatch(argv: list[str]) -> int:
    commands = {"demo": demo_main, "eval": eval_main}
    if (
        not argv
        or argv[0] in ("-h", "--help")
        or argv[0] not in ("demo", "eval", "labels", "train", "serve", "retrieve", "generate-queries", "rank-llm")
    ):
        print(__doc__)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command, rest = argv[0], argv[1:]
    if command == "labels":
        from rerank.labels import main as labels_main

        return labels_main(rest) or 0
    if command == "retrieve":
        from rerank.data.bm25 import main as retrieve_main

        return retrieve_main(rest) or 0
    if command == "generate-queries":
        from rerank.labels.synthetic_queries import main as generate_main

        return generate_main(rest) or 0
    if command == "rank-llm":
        from rerank.cli.rank_llm import main as rank_llm_main

        return rank_llm_main(rest) or 0
    if command == "serve":
        from rerank.serving.server import main as serve_main

        return serve_main(rest) or 0
    if command == "train":
        from rerank.training.train import main as train_main

        return train_main(rest) or 0
    commands[command](rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
