"""One vocabulary and one flag style across commands (rerank.flags)."""

import logging

import pytest

from rerank.flags import DEPTH_ALIASES, FlagParser, upgrade_argv


def test_old_depth_spellings_are_rewritten_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="rerank.flags"):
        argv = upgrade_argv(["--top-k", "20", "--top_n=5", "--rank_top_k", "3", "--depth"], DEPTH_ALIASES, "rerank eval")
    assert argv == ["--depth", "20", "--depth=5", "--rank_top_k", "3", "--depth"]
    assert "rerank eval: --top-k is now spelled --depth" in caplog.text


def test_eval_cli_reads_the_old_top_k_as_depth():
    from transformers import HfArgumentParser

    from rerank.evaluation import EvalConfig

    parser = HfArgumentParser(EvalConfig)
    (new,) = parser.parse_args_into_dataclasses(args=["--collection", "c", "--depth", "20"])
    (old,) = parser.parse_args_into_dataclasses(args=upgrade_argv(["--collection", "c", "--top-k", "20"], DEPTH_ALIASES, "x"))
    assert new.depth == old.depth == 20 and new.rank_top_k is old.rank_top_k is None
    with pytest.raises(ValueError, match="depth must be >= 1"):
        EvalConfig(collection="c", depth=0)


def test_labels_cli_reads_the_old_top_n_as_depth(tmp_path):
    from transformers import HfArgumentParser

    from rerank.labels import LabelConfig

    args = upgrade_argv(["--input", "i", "--output", "o", "--teacher", "qrels", "--top_n", "8"], DEPTH_ALIASES, "x")
    (cfg,) = HfArgumentParser(LabelConfig).parse_args_into_dataclasses(args=args)
    assert cfg.depth == 8


@pytest.mark.parametrize("spelling", ["--max_passage_tokens", "--max-passage-tokens"])
def test_flag_parser_takes_both_spellings_also_in_groups(spelling):
    parser = FlagParser(prog="x")
    parser.add_argument("--max_passage_tokens", type=int, default=1)
    group = parser.add_argument_group("server")
    group.add_argument("--max-wait-ms", type=float, default=0.0)
    args = parser.parse_args([spelling, "7", "--max_wait_ms", "2.5"])
    assert (args.max_passage_tokens, args.max_wait_ms) == (7, 2.5)


def test_serve_parser_speaks_the_house_style():
    from rerank.serving.server import build_parser

    args = build_parser().parse_args(["--model_name", "m", "--max-batch-size", "2", "--api_key", "k"])
    assert (args.model_name, args.max_batch_size, args.api_key) == ("m", 2, "k")
