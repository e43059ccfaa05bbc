"""Fusion of the model's ranking with the first-stage order (``first_stage_weight``)."""

from __future__ import annotations

import json

import pytest

from rerank import Reranker, RerankerConfig
from rerank.fusion import RRF_K, fuse_with_first_stage
from rerank.serving.scores import relevance_scores

DOCS = [
    "Bees shiver their flight muscles to keep the hive warm.",
    "Paris is the capital of France.",
    "A cluster of bees keeps the queen warm in winter.",
    "Rope is made of twisted fibres.",
    "Honey is stored as winter fuel.",
]


def test_fused_scores_hand_computed():
    order, scores = fuse_with_first_stage([2, 0, 1], weight=0.25)
    # doc 0: model rank 2, input rank 1; doc 1: 3 and 2; doc 2: 1 and 3.
    want = [
        0.75 / (RRF_K + 2) + 0.25 / (RRF_K + 1),
        0.75 / (RRF_K + 3) + 0.25 / (RRF_K + 2),
        0.75 / (RRF_K + 1) + 0.25 / (RRF_K + 3),
    ]
    assert scores == pytest.approx(want, abs=1e-15)
    assert order == [2, 0, 1]
    assert all(scores[a] >= scores[b] for a, b in zip(order, order[1:]))


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_fusion_is_a_permutation_between_its_two_inputs(weight):
    model = [4, 1, 3, 0, 2]
    order, _ = fuse_with_first_stage(model, weight)
    assert sorted(order) == list(range(5))
    if weight == 0.0:
        assert order == model
    if weight == 1.0:
        assert order == list(range(5))
    # A document first in both lists stays first whatever the weight.
    order, _ = fuse_with_first_stage([0, 3, 1, 2], weight)
    assert order[0] == 0


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, float("nan")])
def test_bad_weight_is_refused_with_its_name(bad):
    with pytest.raises(ValueError, match="first_stage_weight"):
        RerankerConfig(first_stage_weight=bad)


def test_bad_model_order_is_refused():
    with pytest.raises(ValueError, match="permutation"):
        fuse_with_first_stage([0, 0, 1], 0.5)


@pytest.mark.parametrize("scoring", ["head", "single_pass", "generate"])
def test_reranker_fuses_its_own_ranking(tiny_model, tokenizer, scoring):
    plain = Reranker(tiny_model, tokenizer, RerankerConfig(scoring=scoring)).rerank("bees warm", DOCS)
    fused = Reranker(tiny_model, tokenizer, RerankerConfig(scoring=scoring, first_stage_weight=0.5)).rerank(
        "bees warm", DOCS
    )
    order, scores = fuse_with_first_stage(plain.order, 0.5)
    assert fused.order == order and fused.scores == pytest.approx(scores)
    assert fused.score_kind == "fused" and fused.ranked_by_model == len(DOCS)
    assert Reranker(tiny_model, tokenizer, RerankerConfig(scoring=scoring, first_stage_weight=1.0)).rerank(
        "bees warm", DOCS
    ).order == list(range(len(DOCS)))
    relevance = relevance_scores(fused)  # what the HTTP server returns: in [0, 1], monotone in rank
    along = [relevance[i] for i in fused.order]
    assert along == pytest.approx([1 - r / len(DOCS) for r in range(len(DOCS))])  # by rank, not a flat softmax


def test_from_pretrained_takes_the_recommended_weight(tmp_path, tokenizer):
    from support import make_tiny_llama

    folder = tmp_path / "tiny"
    make_tiny_llama(len(tokenizer), layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "lazyrank.json").write_text(json.dumps({"reranker": {"scoring": "head", "first_stage_weight": 0.4}}))
    rr = Reranker.from_pretrained(str(folder))
    assert rr.config.scoring == "head" and rr.config.first_stage_weight == 0.4
    assert Reranker.from_pretrained(str(folder), first_stage_weight=0.0).config.first_stage_weight == 0.0
    # The shipped default recommends a tournament seeded by the first chunk (deep_leaders=0); asking for
    # interleaved chunks leaves the seeding out instead of failing on the combination.
    (folder / "lazyrank.json").write_text(
        json.dumps({"reranker": {"scoring": "head", "long_list": "tournament", "deep_leaders": 0}})
    )
    assert Reranker.from_pretrained(str(folder)).config.deep_leaders == 0
    rr = Reranker.from_pretrained(str(folder), chunk_layout="interleaved")
    assert (rr.config.long_list, rr.config.chunk_layout, rr.config.deep_leaders) == ("tournament", "interleaved", None)
    with pytest.raises(ValueError, match="needs chunk_layout='consecutive'"):
        Reranker.from_pretrained(str(folder), chunk_layout="interleaved", deep_leaders=2)
