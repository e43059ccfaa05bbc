"""The head's pointwise term: judged grades in the labels, a BCE that ties every prompt to one scale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from support import tiny_head_training_args

from rerank.labels import LabelRecord
from rerank.labels.records import read_labels
from rerank.training.data import ExampleOptions, ListwiseCollator, encode_example
from rerank.training.losses.passage_head import PassageHeadLoss

DOCS = [f"passage {i}: the {['llama', 'rope', 'river'][i % 3]} has {i} legs and lives near water" for i in range(5)]


def test_pointwise_term_hand_computed():
    loss = PassageHeadLoss("ranknet", teacher_weight=0.0, pointwise_weight=2.0)
    scores, ranks = torch.tensor([[0.0, 2.0, 9.0]]), torch.tensor([[1, 2, 0]])
    relevance = torch.tensor([[1.0, 0.0, float("nan")]])  # the padded third passage is ignored
    ranknet = float(PassageHeadLoss("ranknet", teacher_weight=0.0)(scores, ranks))
    # -log sigmoid(0) = log 2; -log(1 - sigmoid(2)) = log(1 + e^2); mean over the two passages
    bce = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2
    assert float(loss(scores, ranks, None, relevance)) == pytest.approx(ranknet + 2.0 * bce, abs=1e-6)
    assert loss.last_terms["pointwise_bce"] == pytest.approx(bce, abs=1e-6)
    with pytest.raises(ValueError, match="pointwise_weight"):
        PassageHeadLoss(pointwise_weight=-0.5)
    with pytest.raises(ValueError, match="relevance must be"):
        loss.pointwise_bce(scores, ranks, torch.zeros(1, 2))


def test_only_the_pointwise_term_sees_a_prompt_wide_shift():
    """Rank and KL terms ignore a constant added to one prompt's scores; the BCE does not, which is
    what makes scores of different prompts comparable. Lists without grades skip the term."""
    listwise = PassageHeadLoss("ranknet", teacher_weight=1.0, teacher_temperature=1.0)
    both = PassageHeadLoss("ranknet", teacher_weight=1.0, teacher_temperature=1.0, pointwise_weight=1.0)
    scores, ranks = torch.tensor([[1.0, -0.5, 0.3]]), torch.tensor([[2, 3, 1]])
    teacher, relevance = torch.tensor([[0.2, 0.1, 0.9]]), torch.tensor([[0.0, 0.0, 1.0]])
    shifted = scores + 4.0
    assert float(listwise(shifted, ranks, teacher)) == pytest.approx(float(listwise(scores, ranks, teacher)), abs=1e-5)
    assert float(both(shifted, ranks, teacher, relevance)) > float(both(scores, ranks, teacher, relevance)) + 0.5
    ungraded = torch.full_like(relevance, float("nan"))
    assert float(both(scores, ranks, teacher, ungraded)) == pytest.approx(float(listwise(scores, ranks, teacher)))
    assert both.last_terms["pointwise_bce"] == 0.0


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(qid: str, grades) -> dict:
    ids = ["a", "b", "c"]
    return {"qid": qid, "query": "q", "initial_list": ids, "final_list": ids, "passages": dict.fromkeys(ids, "t")} | (
        {} if grades is None else {"grades": grades}
    )


def test_labels_read_grades_and_refuse_bad_ones(tmp_path):
    records, _ = read_labels(_write(tmp_path / "ok.jsonl", [_row("1", {"b": 2}), _row("2", {}), _row("3", None)]))
    assert records[0].grades == {"a": 0, "b": 2, "c": 0}  # ungraded passages count as not relevant
    assert records[1].grades == {"a": 0, "b": 0, "c": 0}  # a list with no relevant passage
    assert records[2].grades is None
    for bad in ({"b": -1}, {"b": 1.5}, {"b": True}, ["b"]):
        with pytest.raises(ValueError, match=r"bad.jsonl:1: grades must map"):
            read_labels(_write(tmp_path / "bad.jsonl", [_row("1", bad)]))


def test_examples_carry_relevance_and_pad_it_as_unknown(tokenizer):
    ids = ["a", "b", "c"]
    graded = LabelRecord("1", "q", ids, ids, dict(zip(ids, DOCS)), None, {"a": 0, "b": 3, "c": 0})
    ungraded = LabelRecord("2", "q", ids[:2], ids[:2], dict(zip(ids, DOCS)))
    opts = ExampleOptions(passage_head=True, include_target=False, max_passage_tokens=20)
    batch = ListwiseCollator(tokenizer.pad_token_id)([encode_example(tokenizer, r, opts) for r in (graded, ungraded)])
    assert batch["relevance"][0].tolist() == [0.0, 1.0, 0.0]
    assert torch.isnan(batch["relevance"][1]).all()  # no grades, and the padded third passage


def test_training_with_the_pointwise_term_lowers_it(tmp_path, tokenizer):
    """``rerank train`` with head_pointwise_weight: lists with and without a relevant passage, the
    pointwise term is logged and falls."""
    from rerank.training.train import train

    rows = []
    for i in range(8):
        ids = [f"{i}-{k}" for k in range(4)]
        relevant = {ids[0]: 1} if i % 2 == 0 else {}
        rows.append(_row(str(i), relevant) | {"initial_list": ids, "final_list": ids, "passages": dict(zip(ids, DOCS))})
    args = tiny_head_training_args(
        tokenizer,
        tmp_path,
        rows,
        "--head_pointwise_weight=1.0",
        "--max_passage_tokens=20",
        "--max_steps=10",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--eval_fraction=0.0",
        layers=2,
        seed=5,
    )
    history = train(args)["log_history"]
    bce = [entry["pointwise_bce"] for entry in history if "pointwise_bce" in entry]
    assert len(bce) == 10 and sum(bce[-3:]) < sum(bce[:3])
