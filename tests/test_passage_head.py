"""scoring="head": per-passage readout at each passage's end, its loss, training and loading."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from support import make_tiny_llama

from rerank import Reranker, RerankerConfig
from rerank.engine.passage_head import relevance_from_logits, score_positions
from rerank.labels import LabelRecord
from rerank.prompting.prompts import encode_prompt, relevance_token_ids
from rerank.training.data import ExampleOptions, ListwiseCollator, encode_example
from rerank.training.losses.passage_head import PassageHeadLoss

DOCS = [
    "Bees shiver their flight muscles to keep the hive warm.",
    "Paris is the capital of France.",
    "A cluster of bees keeps the queen warm in winter.",
    "Rope is made of twisted fibres.",
]


def test_passage_end_positions_follow_each_body(tokenizer):
    enc = encode_prompt(tokenizer, "how do bees keep warm", DOCS, 100)
    ends = enc.passage_end_positions()
    assert len(ends) == len(DOCS)
    for (_, end), pos in zip(enc.passage_spans, ends):
        assert pos == end and pos < len(enc.input_ids)
        assert tokenizer.decode(enc.input_ids[pos]) == "\n"  # the separator, not part of any body
        assert not enc.prunable_mask()[pos]


def test_score_positions_equals_full_forward_logits(tiny_model, tokenizer):
    """The engine's readout is logit(yes) - logit(no) of the plain forward at those positions,
    also for a shorter, left-padded row of a batch."""
    yes, no = relevance_token_ids(tokenizer)
    a = encode_prompt(tokenizer, "bees", DOCS, 100)
    b = encode_prompt(tokenizer, "rope", DOCS[:2], 100)
    out = score_positions(
        tiny_model,
        [a.input_ids, b.input_ids],
        [a.passage_end_positions(), b.passage_end_positions()],
        yes,
        no,
        tokenizer.pad_token_id,
    )
    for enc, got in ((a, out.scores[0]), (b, out.scores[1])):
        with torch.no_grad():
            logits = tiny_model(torch.tensor([enc.input_ids])).logits[0]
        want = relevance_from_logits(logits[enc.passage_end_positions()], yes, no).tolist()
        assert got == pytest.approx(want, abs=1e-4)


def test_head_reranker_orders_by_score_and_chunks_long_lists(tiny_model, tokenizer):
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(scoring="head"))
    res = rr.rerank("how do bees keep warm", DOCS)
    assert res.order == sorted(range(len(DOCS)), key=lambda i: (-res.scores[i], i))
    assert res.stats.generated_tokens == 0 and res.stats.fallback is None and res.score_kind == "head_logit"
    # A context too short for the whole list: scored in chunks of window_size, same kind of score.
    small = Reranker(
        tiny_model,
        tokenizer,
        RerankerConfig(
            scoring="head",
            window_size=3,
            stride=1,
            max_context=len(encode_prompt(tokenizer, "how do bees keep warm", DOCS, 100).input_ids) - 1,
        ),
    )
    tick = time.perf_counter()
    chunked = small.rerank("how do bees keep warm", DOCS)
    wall = time.perf_counter() - tick
    assert chunked.stats.fallback == "chunks" and chunked.stats.llm_calls == 2
    # Accounting: the call's time covers its prefills and no more than the call itself took
    # (a chunk offset once leaked into the start time and gave hours per query).
    assert chunked.stats.prefill_seconds <= chunked.stats.total_seconds <= wall
    first = Reranker(tiny_model, tokenizer, RerankerConfig(scoring="head")).rerank("how do bees keep warm", DOCS[:3])
    assert chunked.scores[:3] == pytest.approx(first.scores, abs=1e-4)  # chunk 1 is exactly the 3-passage prompt


def test_head_loss_hand_computed():
    loss = PassageHeadLoss("ranknet", teacher_weight=1.0, teacher_temperature=1.0)
    scores = torch.tensor([[1.0, 0.0]])
    ranks = torch.tensor([[1, 2]])
    teacher = torch.tensor([[0.0, 0.0]])  # uniform teacher: KL(u || softmax([1, 0]))
    p = torch.softmax(scores, -1)[0]
    kl = 0.5 * math.log(0.5 / float(p[0])) + 0.5 * math.log(0.5 / float(p[1]))
    ranknet = math.log(1 + math.exp(-1.0))
    assert float(loss(scores, ranks, teacher)) == pytest.approx(ranknet + kl, abs=1e-5)
    # Padding (rank 0) and missing teacher scores (NaN) change nothing.
    padded = loss(torch.tensor([[1.0, 0.0, 5.0]]), torch.tensor([[1, 2, 0]]), torch.tensor([[0.0, 0.0, float("nan")]]))
    assert float(padded) == pytest.approx(ranknet + kl, abs=1e-5)
    no_teacher = loss(scores, ranks, torch.full((1, 2), float("nan")))
    assert float(no_teacher) == pytest.approx(ranknet, abs=1e-5)


def test_head_example_and_batch_columns(tokenizer):
    rec = LabelRecord(
        "q",
        "bees",
        ["a", "b", "c"],
        ["c", "a", "b"],
        {"a": DOCS[0], "b": DOCS[1], "c": DOCS[2]},
        {"a": 0.5, "b": 0.1, "c": 0.9},
    )
    ex = encode_example(tokenizer, rec, ExampleOptions(passage_head=True, include_target=False))
    enc = encode_prompt(tokenizer, "bees", [DOCS[0], DOCS[1], DOCS[2]], 100)
    assert ex["input_ids"] == enc.input_ids  # prompt only: nothing to decode
    assert ex["head_positions"] == enc.passage_end_positions()
    assert ex["passage_ranks"] == [2, 3, 1] and ex["teacher_scores"] == [0.5, 0.1, 0.9]
    short = encode_example(
        tokenizer,
        LabelRecord("r", "x", ["a", "b"], ["b", "a"], {"a": "p", "b": "q"}),
        ExampleOptions(passage_head=True, include_target=False),
    )
    batch = ListwiseCollator(tokenizer.pad_token_id)([ex, short])
    assert batch["passage_ranks"].tolist() == [[2, 3, 1], [2, 1, 0]]
    assert math.isnan(batch["teacher_scores"][1, 0]) and math.isnan(batch["teacher_scores"][1, 2])


@pytest.mark.parametrize("lm_term", [None, "importance"])
def test_head_objective_reads_only_its_positions(tiny_model, tokenizer, lm_term):
    """The head objective projects only the passage ends (and the response, with an LM term) to the
    vocabulary; its loss is head_weight * head loss (+ LM loss) computed from every position's logits."""
    from rerank.training.losses import ImportanceAwareLoss
    from rerank.training.objectives import PassageHeadObjective

    recs = [
        LabelRecord(
            "q",
            "bees",
            ["a", "b", "c"],
            ["c", "a", "b"],
            {"a": DOCS[0], "b": DOCS[1], "c": DOCS[2]},
            {"a": 0.5, "b": 0.1, "c": 0.9},
        ),
        LabelRecord("r", "rope", ["a", "b"], ["b", "a"], {"a": DOCS[3], "b": DOCS[1]}),
    ]
    opts = ExampleOptions(passage_head=True, include_target=lm_term is not None)
    batch = ListwiseCollator(tokenizer.pad_token_id)([encode_example(tokenizer, r, opts) for r in recs])
    head, lm = PassageHeadLoss("ranknet"), ImportanceAwareLoss() if lm_term else None
    objective = PassageHeadObjective(head, relevance_token_ids(tokenizer), weight=2.0, lm_loss=lm)
    assert objective.example_options()["include_target"] is (lm_term is not None)
    with torch.no_grad():
        out = objective(tiny_model, {k: v.clone() for k, v in batch.items()})
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ends = batch["head_positions"]
        picked = logits.gather(1, ends[..., None].expand(-1, -1, logits.size(-1)))
        scores = relevance_from_logits(picked, *relevance_token_ids(tokenizer))
        want = 2.0 * head(scores, batch["passage_ranks"], batch["teacher_scores"])
        if lm:
            want = want + lm(logits, batch["labels"], batch["rank_ids"])
    assert float(out.loss) == pytest.approx(float(want), rel=1e-5)
    assert set(out.terms) == {"rank_loss", "teacher_kl"} | ({"lm_loss"} if lm else set())


def test_head_training_learns_and_ships_its_scoring(tmp_path, tokenizer):
    """A tiny model trained with the head loss fits its lists (held-out loss falls below the
    starting loss), writes lazyrank.json, and from_pretrained(folder) ranks with scoring='head'."""
    from rerank.training.train import parse_args, train

    folder = tmp_path / "tiny"
    make_tiny_llama(len(tokenizer), layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rows = []
    for i in range(12):
        docs = {f"r{i}": f"bees keep warm number {i}", f"n{i}": f"paris france {i}", f"m{i}": f"rope fibres {i}"}
        order = [f"n{i}", f"r{i}", f"m{i}"]
        rows.append(
            {
                "qid": str(i),
                "query": "bees warm",
                "initial_list": order,
                "final_list": [f"r{i}", f"m{i}", f"n{i}"],
                "passages": docs,
                "teacher_scores": {f"r{i}": 0.9, f"m{i}": 0.2, f"n{i}": 0.1},
            }
        )
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = parse_args(
        [
            f"--model_name_or_path={folder}",
            f"--train_file={labels}",
            f"--output_dir={out}",
            "--objective=head",
            "--head_lm_loss=none",
            "--head_rank_loss=ranknet",
            "--max_steps=30",
            "--learning_rate=3e-3",
            "--per_device_train_batch_size=2",
            "--lora_r=8",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "o_proj",
            "down_proj",
            "--report_to=none",
            "--save_strategy=no",
            "--logging_steps=5",
            "--lora_layers_from=0.5",
        ]
    )
    metrics = train(args)
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    assert json.loads((out / "lazyrank.json").read_text())["reranker"]["scoring"] == "head"
    rr = Reranker.from_pretrained(str(out))
    assert rr.config.scoring == "head"
    res = rr.rerank("bees warm", ["paris france 99", "bees keep warm number 99", "rope fibres 99"])
    assert res.order[0] == 1
