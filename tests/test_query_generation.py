"""Synthetic queries: cleaning, resumable generation with a real (tiny) LM, round-trip filter, outputs."""

from __future__ import annotations

import json

import pytest
from support import make_tiny_llama

from rerank.labels.synthetic_queries import (
    GenerationConfig,
    LocalGenerator,
    OpenAIGenerator,
    clean_query,
    few_shot_prompt,
    generate_queries,
)

CORPUS = {
    "d1": "Bees shiver to keep the hive warm in winter.",
    "d2": "Paris is the capital of France.",
    "d3": "Honey bees cluster around the queen.",
    "d4": "Ropes are made of twisted fibres.",
}


def test_clean_query_rules():
    assert clean_query(' Query: "how do bees stay warm"\nPassage: x', "p") == ("how do bees stay warm", "ok")
    assert clean_query("   \n", "p") == (None, "empty")
    assert clean_query("bees", "p") == (None, "too_short")
    assert clean_query(" ".join(["w"] * 41), "p") == (None, "too_long")
    text = "Bees shiver to keep the hive warm in winter."
    assert clean_query("Bees shiver to keep the hive warm", text) == (None, "copies_passage")


def test_prompt_ends_with_the_passage():
    prompt = few_shot_prompt("one two three " * 100, max_words=5)
    assert prompt.endswith("Passage: one two three one two\nQuery:")


def test_openai_key_never_goes_over_plain_http(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(ValueError, match="plain http"):
        OpenAIGenerator("m", base_url="http://example.com/v1")
    OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1")  # loopback is fine


class ScriptedGenerator:
    """Answers from a list: stands in for a remote LLM; counts calls."""

    name = "scripted"

    def __init__(self, answers):
        self.answers, self.calls = list(answers), 0

    def generate(self, prompts):
        self.calls += 1
        return [self.answers.pop(0) for _ in prompts]


def _collection(tmp_path):
    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in CORPUS.items()))
    (coll / "queries.jsonl").write_text("")
    return coll


def test_filters_count_and_resume(tmp_path):
    coll = _collection(tmp_path)
    out = tmp_path / "q" / "queries.jsonl"
    cfg = GenerationConfig(collection=str(coll), output=str(out), batch_size=2, round_trip_depth=1, depth=3)
    answers = [
        ("bees warm hive winter", -0.5),  # d1: comes back first -> kept
        ("capital of germany", -0.2),  # d2: shares 'capital' -> d2 first -> kept
        ("", float("nan")),  # d3: no answer -> dropped as empty
        ("stock market prices", -1.0),
    ]  # d4: its passage does not come back -> dropped
    gen = ScriptedGenerator(answers)
    summary = generate_queries(cfg, generator=gen, progress=False)
    assert summary["generated"] == 4 and summary["dropped_by_reason"] == {"empty": 1}
    assert summary["clean"] == 3 and summary["after_round_trip"] == 2 and summary["kept"] == 2
    queries = [json.loads(line) for line in out.read_text().splitlines()]
    assert [q["source"] for q in queries] == ["d1", "d2"] and queries[0]["source_rank"] == 1
    qrels = (tmp_path / "q" / "queries.qrels.txt").read_text().split()
    assert qrels[:4] == ["gen-d1-0", "0", "d1", "1"]
    cands = [json.loads(line) for line in (tmp_path / "q" / "queries.candidates.jsonl").read_text().splitlines()]
    assert cands[0]["candidates"][0]["docid"] == "d1"
    # Resume: everything is in the raw log, so nothing is generated again; keep_fraction re-filters.
    again = generate_queries(
        GenerationConfig(collection=str(coll), output=str(out), round_trip_depth=1, keep_fraction=0.5),
        generator=ScriptedGenerator([]),
        progress=False,
    )
    assert again["kept"] == 1
    assert json.loads(out.read_text().splitlines()[0])["source"] == "d2"  # the higher log-probability


def test_interrupted_run_resumes_without_losing_generations(tmp_path):
    coll = _collection(tmp_path)
    out = tmp_path / "queries.jsonl"
    raw = tmp_path / "queries.raw.jsonl"
    first = json.dumps({"source": "d1", "k": 0, "raw": "bees", "query": None, "status": "too_short", "logprob": -1.0})
    raw.write_text(first + "\n" + '{"source": "d2", "k"')  # killed mid-write
    gen = ScriptedGenerator([("capital of france", -0.1), ("honey bees queen", -0.1), ("twisted ropes", -0.1)])
    summary = generate_queries(
        GenerationConfig(collection=str(coll), output=str(out), round_trip_depth=0), generator=gen, progress=False
    )
    assert summary["generated"] == 4 and summary["dropped_by_reason"] == {"too_short": 1}
    assert len(raw.read_text().splitlines()) == 4


def test_local_generator_with_a_real_tiny_model(tmp_path, tokenizer):
    folder = tmp_path / "tiny"
    make_tiny_llama(len(tokenizer), layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    gen = LocalGenerator(str(folder), max_new_tokens=6, batch_size=2)
    answers = gen.generate([few_shot_prompt(CORPUS["d1"]), few_shot_prompt(CORPUS["d2"])])
    assert len(answers) == 2
    for text, logp in answers:
        assert isinstance(text, str) and logp <= 0.0
    coll = _collection(tmp_path)
    summary = generate_queries(
        GenerationConfig(collection=str(coll), output=str(tmp_path / "g.jsonl"), round_trip_depth=0),
        generator=gen,
        progress=False,
    )
    assert summary["generated"] == 4  # random weights write junk: dropped and counted, never a crash
    assert summary["clean"] + sum(summary["dropped_by_reason"].values()) == 4


def test_bad_config():
    with pytest.raises(ValueError, match="keep_fraction"):
        GenerationConfig(collection="x", output="y", keep_fraction=0.0)
