"""End to end on the real default model (SmolLM2-135M-Instruct, offline). Marked `model`."""

import pytest

from rerank.decoding import is_permutation
from rerank.demo import DEMO_PASSAGES, DEMO_QUERY

pytestmark = pytest.mark.model


def test_default_model_full_ranking_is_a_permutation(real_reranker):
    res = real_reranker.rerank(DEMO_QUERY, DEMO_PASSAGES)
    assert is_permutation(res.order, len(DEMO_PASSAGES))
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
    from rerank.cli import main

    assert main(["demo", "--top-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "prefill" in text and "strategy=full" in text
