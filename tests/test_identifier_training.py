"""The packed prompt+target+tree forward: LM loss unchanged, identifier scores equal inference."""

import json

import pytest
import torch
from test_training import _restore_accelerate_env, label_file, tiny_dir  # noqa: F401  (shared fixtures)

from rerank.engine import DenseSession
from rerank.engine.decoding import TokenTable
from rerank.engine.single_pass import identifier_scores, score_identifiers
from rerank.labels import LabelRecord
from rerank.prompting.prompts import encode_prompt
from rerank.training.data import ExampleOptions, ListwiseCollator, encode_example
from rerank.training.losses import LMLoss


def records():
    a = LabelRecord(
        "q1",
        "what is rope",
        [f"d{i}" for i in range(12)],
        [f"d{i}" for i in (3, 11, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10)],
        {f"d{i}": f"passage {i} about rope and cable" for i in range(12)},
    )
    b = LabelRecord("q2", "fish", ["x", "y", "z"], ["z", "x", "y"], {"x": "a fish", "y": "a dog", "z": "a big fish"})
    return [a, b]


@pytest.fixture(scope="module")
def packed(tokenizer):
    opts = ExampleOptions(max_passage_tokens=16, identifier_tree=True)
    feats = [encode_example(tokenizer, r, opts) for r in records()]
    return feats, ListwiseCollator(tokenizer.pad_token_id)(feats)


def test_tree_columns_and_ranks(packed):
    feats, batch = packed
    assert feats[0]["passage_ranks"][3] == 1 and feats[0]["passage_ranks"][11] == 2
    assert batch["attention_mask"].dim() == 4
    assert batch["passage_ranks"][1].tolist()[:3] == [2, 3, 1] and batch["passage_ranks"][1, 3:].sum() == 0
    assert batch["num_tokens"].tolist() == [len(f["input_ids"]) + len(f["tree_ids"]) for f in feats]


def test_packed_scores_equal_inference_single_pass(packed, tokenizer, tiny_model):
    feats, batch = packed
    with torch.no_grad():
        out = tiny_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        )
    scores = identifier_scores(out.logits, batch["edge_source"], batch["edge_token"], batch["path_matrix"])
    table = TokenTable.for_tokenizer(tokenizer)
    for row, rec in enumerate(records()):
        enc = encode_prompt(tokenizer, rec.query, [rec.passages[d] for d in rec.initial_list], 16)
        want = score_identifiers(
            DenseSession(tiny_model, tokenizer.pad_token_id), [enc.input_ids], [enc.num_passages], table
        ).scores[0]
        assert scores[row, : len(want)].tolist() == pytest.approx(want, abs=1e-4)


def test_lm_loss_is_unchanged_by_the_tree(packed, tokenizer, tiny_model):
    feats, batch = packed
    plain_feats = [encode_example(tokenizer, r, ExampleOptions(max_passage_tokens=16)) for r in records()]
    plain = ListwiseCollator(tokenizer.pad_token_id)(plain_feats)
    loss = LMLoss()
    with torch.no_grad():
        packed_logits = tiny_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
        plain_logits = tiny_model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits
    assert float(loss(packed_logits, batch["labels"], batch["rank_ids"])) == pytest.approx(
        float(loss(plain_logits, plain["labels"], plain["rank_ids"])), abs=1e-5
    )


def test_ranking_loss_overfits_one_batch(packed, tokenizer):
    """Gradients reach the model through the packed tree: a tiny model fits two labelled lists of
    different lengths (so with padding) within a few dozen steps."""
    from support import make_tiny_llama

    from rerank.training.losses.identifier_ranking import IdentifierRankingLoss

    torch.manual_seed(0)
    model = make_tiny_llama(len(tokenizer), layers=2).train()
    _, batch = packed
    loss_fn = IdentifierRankingLoss("ranknet")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    values = []
    for _ in range(30):
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
        loss = loss_fn(
            identifier_scores(logits, batch["edge_source"], batch["edge_token"], batch["path_matrix"]),
            batch["passage_ranks"],
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(loss))
    assert all(map(torch.isfinite, torch.tensor(values)))
    assert values[-1] < 0.2 * values[0]


def test_joint_objective_trains(tmp_path, tiny_dir, label_file):  # noqa: F811
    from rerank.training.train import parse_args, train

    args = [
        "--model_name_or_path",
        tiny_dir,
        "--train_file",
        label_file,
        "--max_passage_tokens",
        "16",
        "--max_steps",
        "2",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--objective",
        "identifier_ranking",
        "--ranking_loss",
        "listmle",
        "--ranking_weight",
        "0.5",
        "--output_dir",
        str(tmp_path / "joint"),
    ]
    metrics = train(parse_args(args))
    assert metrics["global_step"] == 2
    logged = [h for h in metrics["log_history"] if "loss" in h]
    # each logged step carries both terms, and they add up to the loss with the weight
    assert all(h["lm_loss"] + 0.5 * h["ranking_loss"] == pytest.approx(h["loss"], abs=2e-3) for h in logged)
    assert metrics["tokens_seen"] < 2 * 2 * 4096  # real tokens, not entries of the 4-D mask
    recommended = json.loads((tmp_path / "joint" / "lazyrank.json").read_text())
    assert recommended["reranker"]["scoring"] == "single_pass"
    assert recommended["trained_with"]["objective"] == "identifier_ranking"
    with pytest.raises(ValueError, match="ranking_loss"):
        parse_args(args[:-2] + ["--ranking_loss", "hinge", "--output_dir", str(tmp_path / "x")])


@pytest.mark.parametrize("joint", [False, True])
def test_trainer_loss_with_tail_logits_equals_full_logits(tmp_path, tokenizer, tiny_model, joint):
    """The trainer projects only the response/tree positions to the vocabulary; the loss must be the
    one computed from every position's logits."""
    from transformers import TrainingArguments

    from rerank.training.losses import ImportanceAwareLoss
    from rerank.training.losses.identifier_ranking import IdentifierRankingLoss
    from rerank.training.objectives import IdentifierRankingObjective, LanguageModelObjective, first_scored_position
    from rerank.training.train import ListwiseTrainer

    opts = ExampleOptions(max_passage_tokens=16, identifier_tree=joint)
    feats = [encode_example(tokenizer, r, opts) for r in records()]
    batch = ListwiseCollator(tokenizer.pad_token_id)(feats)
    lm_loss, rank_loss = ImportanceAwareLoss(), IdentifierRankingLoss("ranknet")
    objective = IdentifierRankingObjective(lm_loss, rank_loss) if joint else LanguageModelObjective(lm_loss)
    trainer = ListwiseTrainer(
        model=tiny_model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
        objective=objective,
    )
    assert first_scored_position(batch["labels"]) > 10  # the prompt really is skipped
    with torch.no_grad():
        got = float(trainer.compute_loss(tiny_model, {k: v.clone() for k, v in batch.items()}))
        model_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        logits = tiny_model(**model_inputs).logits
        want = lm_loss(logits, batch["labels"], batch["rank_ids"])
        if joint:
            want = want + rank_loss(
                identifier_scores(logits, batch["edge_source"], batch["edge_token"], batch["path_matrix"]),
                batch["passage_ranks"],
            )
    assert got == pytest.approx(float(want), rel=1e-5, abs=1e-6)
