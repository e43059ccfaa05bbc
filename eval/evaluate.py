"""Rerank a first-stage run on a TREC-style collection and score it with ir-measures.

    python eval/evaluate.py --collection ../shared/data/msmarco-dl19 --depth 20 --strategy full \
        --output_dir runs/dl19-full20

Same as ``rerank eval``. ``--strategy none`` scores the first-stage run as is (BM25 on DL19: nDCG@10 0.5058).
"""

import sys

from rerank.cli import eval_main


def main() -> None:
    eval_main(sys.argv[1:])


if __name__ == "__main__":
    main()
