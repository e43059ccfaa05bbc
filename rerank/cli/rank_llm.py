"""``rerank rank-llm``: rerank a rank_llm Request file into a Result file with a :class:`~rerank.Reranker`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rerank.data.rank_llm_files import rerank_rank_llm_file
from rerank.prompting.presets import PRESETS
from rerank.reranker import Reranker
from rerank.scorers import SCORINGS


def main(argv: Sequence[str] | None = None) -> int:
    """``rerank rank-llm --input requests.jsonl --output results.jsonl [--model ...] [--prompt ...]``.

    Reranks a rank_llm requests file (e.g. from ``rerank retrieve --rank_llm_output`` or rank_llm's
    own retrieval) and writes rank_llm results, so runs move between the two toolkits.
    """
    ap = argparse.ArgumentParser(
        prog="rerank rank-llm", description="Rerank a rank_llm Request file into a Result file."
    )
    ap.add_argument("--input", required=True, help="rank_llm requests: a JSON list or JSONL.")
    ap.add_argument("--output", required=True, help="rank_llm results to write (.jsonl = JSONL, else a JSON list).")
    ap.add_argument(
        "--model", default=None, help="Model path or hub id; default: the shipped reranker; 'base' = raw base."
    )
    ap.add_argument("--prompt", default=None, choices=sorted(PRESETS), help="Prompt preset (default: the model's).")
    ap.add_argument("--scoring", default=None, choices=list(SCORINGS), help="Default: what the model recommends.")
    ap.add_argument(
        "--top_k", type=int, default=None, help="Decide only the best k (generate decodes only k identifiers)."
    )
    args = ap.parse_args(argv)
    kwargs = {"scoring": args.scoring}
    if args.prompt:
        kwargs["prompt"] = args.prompt
    reranker = Reranker.from_pretrained(args.model, **kwargs)
    done = rerank_rank_llm_file(reranker, args.input, args.output, top_k=args.top_k)
    print(f"wrote {args.output}: {len(done)} reranked requests")
    return 0
