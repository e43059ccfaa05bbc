"""End to end on the real default model (SmolLM2-135M-Instruct, offline). Marked `model`."""

import copy
import math

import pytest
import torch

from rerank import Reranker, RerankerConfig
from rerank.cli.demo import DEMO_PASSAGES, DEMO_QUERY
from rerank.engine.session import cache_kwarg
from rerank.engine.single_pass import IdentifierTree
from rerank.ranking import Window

pytestmark = pytest.mark.model


def _forced_log_probs(model, prompt: list[int], continuations: list[list[int]]) -> list[float]:
    """log P(continuation | prompt) of each continuation by an ordinary causal forward over a copy of
    the prompt's KV cache: the slow, plainly right computation the one-pass tree must reproduce."""
    from transformers import DynamicCache

    device, kw = next(model.parameters()).device, cache_kwarg(model)
    out = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        first = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, **{kw: cache})
        after_prompt = first.logits[0, -1].float().log_softmax(-1)
        for tokens in continuations:
            ids = torch.tensor([tokens], device=device)
            positions = torch.arange(len(prompt), len(prompt) + len(tokens), device=device)[None]
            step = model(input_ids=ids, position_ids=positions, use_cache=True, **{kw: copy.deepcopy(cache)})
            rows = torch.cat([after_prompt[None], step.logits[0, :-1].float().log_softmax(-1)])
            out.append(float(rows.gather(1, ids[0][:, None]).sum()))
    return out


def test_single_pass_scores_are_the_models_identifier_log_probs(real_reranker):
    """What constrained decoding cannot guarantee: the scores are log P(first identifier = [k]) of
    the real model, equal to one plain forward per identifier (one- and two-digit ids alike), and,
    identifiers being disjoint answers, their probabilities sum to at most 1."""
    rr = Reranker(real_reranker.model, real_reranker.tokenizer, RerankerConfig(scoring="single_pass"))
    res = rr.rerank(DEMO_QUERY, DEMO_PASSAGES)
    assert res.score_kind == "log_prob" and res.stats.llm_calls == 1
    assert all(math.isfinite(s) and s < 0 for s in res.scores)
    assert math.fsum(math.exp(s) for s in res.scores) <= 1.0
    tree = IdentifierTree.build(rr.table, len(DEMO_PASSAGES))
    spellings = [[tree.tokens[node] for node in reversed(path)] for path in tree.paths]
    assert [len(t) for t in spellings] == [3] * 9 + [4] * 3  # "[", digits, "]"
    enc = rr.encode(Window(query=DEMO_QUERY, passages=DEMO_PASSAGES))
    want = _forced_log_probs(rr.model, enc.input_ids, spellings)
    # bf16 products (precision "auto" on CPUs with native bf16, bf16 weights on GPUs) round differently
    # in a cached step than in one forward.
    exact = next(rr.model.parameters()).dtype == torch.float32 and real_reranker.config.precision in (None, "fp32")
    tolerance = 1e-3 if exact else 5e-2
    assert max(abs(a - b) for a, b in zip(res.scores, want)) < tolerance
    assert res.order == sorted(range(len(want)), key=lambda i: (-want[i], i))


def test_default_model_generates_the_canonical_answer(real_reranker):
    rr = Reranker(real_reranker.model, real_reranker.tokenizer, RerankerConfig(scoring="generate"))
    res = rr.rerank(DEMO_QUERY, DEMO_PASSAGES)
    assert res.stats.llm_calls == 1
    # Canonical tokens: "[", digits, "]" for the first id; then " >", " [", digits, "]" for each of the
    # other 11; 9 one-digit and 3 two-digit ids give 15 digit tokens.
    assert res.stats.generated_tokens == 2 + 11 * 3 + 15


def test_default_model_top_k_and_api(real_reranker):
    out = real_reranker.rank(DEMO_QUERY, DEMO_PASSAGES, top_k=3, return_documents=True)
    assert len(out) == 3 and all(DEMO_PASSAGES[o["corpus_id"]] == o["text"] for o in out)
    full = real_reranker.rerank(DEMO_QUERY, DEMO_PASSAGES)
    assert [o["corpus_id"] for o in out] == full.order[:3]


def test_cli_demo_runs(capsys):
    from rerank.cli.commands import main

    assert main(["demo", "--top_k", "2"]) == 0
    text = capsys.readouterr().out
    assert "prefill" in text and "strategy=full" in text


# Passages of the demo that answer "how do honey bees keep their hive warm in winter" (0-based):
# clustering and shivering, insulation, the rotating cluster, honey as fuel, condensation.
HIVE_WARMTH = {0, 3, 4, 7, 10}


def test_shipped_default_ranks_by_relevance(real_reranker):
    """The shipped weights must move relevant passages up, not return the input order."""
    assert real_reranker.config.scoring == "head"
    # The shipped recommendation (lazyrank.json): the model alone, calibrated, tournaments for long lists.
    assert real_reranker.config.first_stage_weight == 0.0 and real_reranker.config.long_list == "tournament"
    assert real_reranker.calibration is not None
    raw = Reranker(real_reranker.model, real_reranker.tokenizer, RerankerConfig(scoring="head"))
    res = raw.rerank(DEMO_QUERY, DEMO_PASSAGES)
    assert res.score_kind == "head_logit" and res.stats.llm_calls == 1
    assert res.order != list(range(len(DEMO_PASSAGES)))
    rank = {index: r for r, index in enumerate(res.order)}
    assert set(res.order[:3]) <= HIVE_WARMTH
    relevant = sum(rank[i] for i in HIVE_WARMTH) / len(HIVE_WARMTH)
    others = sum(r for i, r in rank.items() if i not in HIVE_WARMTH) / (len(DEMO_PASSAGES) - len(HIVE_WARMTH))
    assert relevant < others - 2  # mean rank 4 positions apart here; 0 for a random order on average
    # Scores order the passages: best first, non-increasing.
    assert all(res.scores[a] >= res.scores[b] for a, b in zip(res.order, res.order[1:]))
    # The default: the same order, scores mapped to probabilities by the shipped calibration.
    calibrated = real_reranker.rerank(DEMO_QUERY, DEMO_PASSAGES)
    assert calibrated.score_kind == "probability" and calibrated.order == res.order
    single = real_reranker.calibration.probabilities(res.scores, "single")  # a list that fits one prompt
    assert calibrated.scores == pytest.approx(single, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in calibrated.scores)


def test_shipped_default_ranks_a_long_list_by_interleaved_tournament(real_reranker):
    """30 passages (the demo's 12, then 18 of them again reworded): two interleaved chunks of 15
    (first-stage ranks 1, 3, 5, ... and 2, 4, 6, ...), then a final prompt over the 20 most probable,
    read in first-stage order; every passage gets a probability."""
    docs = DEMO_PASSAGES + [f"Note {i}: {DEMO_PASSAGES[i % 12].lower()}" for i in range(18)]
    res = real_reranker.rerank(DEMO_QUERY, docs)
    assert res.stats.fallback == "tournament" and res.stats.llm_calls == 3
    assert sorted(res.order) == list(range(30))
    # The same prompts, one at a time: each chunk is a list of 15 in first-stage order, read as a chunk.
    cal = real_reranker.calibration
    probability = {}
    for members in (list(range(0, 30, 2)), list(range(1, 30, 2))):
        (chunk,) = real_reranker.read_windows([Window(query=DEMO_QUERY, passages=[docs[i] for i in members])])
        probability.update(zip(members, cal.probabilities(chunk.scores, "chunk")))
    flat = list(range(0, 30, 2)) + list(range(1, 30, 2))  # the chunks laid end to end (ties: chunk order)
    leaders = sorted(sorted(flat, key=lambda i: (-probability[i], flat.index(i)))[:20])
    (final,) = real_reranker.read_windows([Window(query=DEMO_QUERY, passages=[docs[i] for i in leaders])])
    final_probability = cal.probabilities(final.scores, "final")  # the final prompt's own parameters
    final_order = sorted(range(20), key=lambda k: (-final_probability[k], k))
    assert res.order[:20] == [leaders[k] for k in final_order]
    assert [res.scores[i] for i in res.order[:20]] == pytest.approx(
        [final_probability[k] for k in final_order], abs=1e-5
    )
    along = [res.scores[i] for i in res.order]
    assert along == sorted(along, reverse=True)


def test_raw_base_model_stays_reachable_by_name(real_reranker):
    base = Reranker.from_pretrained("base")
    assert base.config.scoring == "generate"

    # The shipped adapter is merged into the default's later layers (15..29) only.
    def weight(rr, layer):
        return rr.model.model.layers[layer].mlp.down_proj.weight

    assert torch.equal(weight(base, 0), weight(real_reranker, 0))
    assert not torch.equal(weight(base, 29), weight(real_reranker, 29))
