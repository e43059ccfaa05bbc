"""Lists longer than one prompt (chunks, tournament, sliding) and calibrated head probabilities."""

from __future__ import annotations

import json
import math
import random

import pytest
from support import load_script

from rerank import Reranker, RerankerConfig
from rerank.calibration import HeadCalibration, expected_calibration_error, weights_fingerprint
from rerank.long_lists import chunk_members, round_robin, tournament_leaders, tournament_order
from rerank.precision import cpu_supports
from rerank.ranking import Window
from rerank.results import RankingResult
from rerank.serving.scores import relevance_scores

QUERY = "how do bees keep warm"
DOCS = [f"Passage {i}: bees {'shiver to keep warm' if i % 3 == 0 else 'forage'} in hive {i}." for i in range(11)]


def test_round_robin_takes_each_chunks_best_first():
    assert round_robin([[0.1, 0.9, 0.5], [0.2], [0.7, 0.8]]) == [(0, 1), (1, 0), (2, 1), (0, 2), (2, 0), (0, 0)]


def test_tournament_order_hand_computed():
    chunks = [[0.0, 3.0, 1.0], [2.0, -1.0, 5.0], [4.0]]  # chunk size 3: passages 0-2, 3-5, 6
    assert tournament_leaders(chunks, 3) == [1, 5, 6]  # best of each chunk
    order, scores = tournament_order(chunks, 3, [0.5, 0.9, 0.1])  # final prompt: 5 > 1 > 6
    assert order == [5, 1, 6, 2, 3, 0, 4]  # leaders by final score, then round-robin (2nd bests, 3rd bests)
    # Scores never increase down the order; each is its own, capped by the one above.
    assert [scores[i] for i in order] == [0.9, 0.5, 0.1, 0.1, 0.1, 0.0, -1.0]
    with pytest.raises(ValueError, match="3 final scores"):
        tournament_order(chunks, 3, [0.5])


def test_seeded_tournament_takes_the_first_chunks_best_and_a_few_deep_ones():
    chunks = [[0.0, 3.0, 1.0], [2.0, -1.0, 5.0], [4.0, 0.5]]  # size 3: passages 0-2, 3-5, 6-7
    # Round-robin over the deep chunks (5, 6, then 3, 7, 4): one deep leader; the first chunk's best two.
    assert tournament_leaders(chunks, 3, deep_leaders=1) == [1, 2, 5]
    # Comparable scores: the deep leaders are the best deep passages by score (5.0 then 4.0).
    assert tournament_leaders(chunks, 3, comparable=True, deep_leaders=2) == [1, 5, 6]
    order, _ = tournament_order(chunks, 3, [0.1, 0.2, 0.3], comparable=True, deep_leaders=2)
    assert order == [6, 5, 1, 3, 2, 7, 0, 4]  # leaders by final score, then the rest by score
    assert tournament_leaders(chunks, 3, deep_leaders=0) == [0, 1, 2]  # = rerank the first window only
    assert tournament_leaders([[1.0, 2.0]], 3, deep_leaders=2) == [0, 1]  # one chunk: nothing deep


def test_long_list_settings_are_validated():
    with pytest.raises(ValueError, match="long_list must be one of"):
        RerankerConfig(scoring="head", long_list="bubble")
    with pytest.raises(ValueError, match="deep_leaders"):
        RerankerConfig(scoring="head", deep_leaders=-1)
    with pytest.raises(ValueError, match="must not exceed window_size"):
        RerankerConfig(scoring="head", window_size=4, stride=2, deep_leaders=5)


def _counting(rr: Reranker) -> list[int]:
    """Count prompts the scorer actually runs (memo hits never reach it)."""
    calls, rank = [], rr.scorer.rank

    def counted(encs, top_ks):
        calls.append(len(encs))
        return rank(encs, top_ks)

    rr.scorer.rank = counted
    return calls


def test_tournament_reranks_the_chunk_leaders_in_one_prompt(tiny_model, tokenizer):
    cfg = RerankerConfig(scoring="head", window_size=4, stride=2, long_list="tournament")
    res = Reranker(tiny_model, tokenizer, cfg).rerank(QUERY, DOCS)
    assert sorted(res.order) == list(range(len(DOCS)))
    assert res.stats.fallback == "tournament" and res.stats.llm_calls == 3 + 1  # chunks of 4, 4, 3 + the final
    assert res.stats.chunk_layout == "consecutive"
    # Independent recomputation: chunk readouts, leaders, and the final prompt's readouts.
    plain = Reranker(tiny_model, tokenizer, RerankerConfig(scoring="head"))
    chunks = [plain.rerank(QUERY, DOCS[o : o + 4]).scores for o in (0, 4, 8)]
    leaders = tournament_leaders(chunks, 4)
    final = plain.rerank(QUERY, [DOCS[k] for k in leaders]).scores
    want_order, want_scores = tournament_order(chunks, 4, final)
    assert res.order[:4] == want_order[:4]
    assert res.scores == pytest.approx(want_scores, abs=1e-4)
    along = [res.scores[i] for i in res.order]
    assert along == sorted(along, reverse=True)


def test_sliding_and_chunks_for_head_scoring(tiny_model, tokenizer):
    sliding = Reranker(
        tiny_model, tokenizer, RerankerConfig(scoring="head", window_size=4, stride=2, long_list="sliding")
    )
    res = sliding.rerank(QUERY, DOCS)
    assert res.stats.fallback == "sliding" and sorted(res.order) == list(range(len(DOCS)))
    assert res.stats.chunk_layout is None
    assert res.stats.llm_calls == 5  # windows of 4 start at 7, 5, 3, 1 and 0 (back to front, step 2)
    chunks = Reranker(
        tiny_model, tokenizer, RerankerConfig(scoring="head", window_size=4, stride=2, long_list="chunks")
    )
    res = chunks.rerank(QUERY, DOCS)
    assert res.stats.fallback == "chunks" and res.stats.llm_calls == 3
    assert res.order == sorted(range(len(DOCS)), key=lambda i: (-res.scores[i], i))
    # one_prompt reads them all at once when they fit.
    one = Reranker(tiny_model, tokenizer, RerankerConfig(scoring="head", window_size=4, stride=2)).rerank(QUERY, DOCS)
    assert one.stats.fallback is None and one.stats.llm_calls == 1


def test_interleaved_chunks_mix_first_stage_ranks():
    assert chunk_members(11, 4, "interleaved") == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert chunk_members(100, 20, "interleaved")[4] == list(range(4, 100, 5))
    for n, size in ((1, 3), (7, 7), (45, 4), (101, 20)):
        for layout in ("consecutive", "interleaved"):
            members = chunk_members(n, size, layout)
            assert sorted(k for m in members for k in m) == list(range(n))  # a partition
            assert len(members) == -(-n // size) and max(map(len, members)) <= size
            assert all(m == sorted(m) for m in members)  # first-stage order inside a prompt
    with pytest.raises(ValueError, match="chunk layout must be one of"):
        chunk_members(5, 2, "random")
    with pytest.raises(ValueError, match="chunk_layout must be one of"):
        RerankerConfig(scoring="head", chunk_layout="random")
    with pytest.raises(ValueError, match="needs chunk_layout='consecutive'"):
        RerankerConfig(scoring="head", chunk_layout="interleaved", deep_leaders=0)


def test_interleaved_chunks_and_tournament_match_a_recomputation(tiny_model, tokenizer):
    plain = Reranker(tiny_model, tokenizer, RerankerConfig(scoring="head"))
    members = chunk_members(len(DOCS), 4, "interleaved")  # [0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]
    own = [0.0] * len(DOCS)
    for m in members:
        for k, s in zip(m, plain.rerank(QUERY, [DOCS[k] for k in m]).scores):
            own[k] = s
    cfg = RerankerConfig(scoring="head", window_size=4, stride=2, long_list="chunks", chunk_layout="interleaved")
    res = Reranker(tiny_model, tokenizer, cfg).rerank(QUERY, DOCS)
    assert res.stats.fallback == "chunks" and res.stats.llm_calls == 3 and res.stats.chunk_layout == "interleaved"
    assert res.scores == pytest.approx(own, abs=1e-4)
    assert res.order == sorted(range(len(DOCS)), key=lambda i: (-own[i], i))
    # Tournament: raw scores compare across interleaved prompts, so the best 4 by score meet in a final
    # prompt (in first-stage order); the rest follow by score, capped below the final prompt's last.
    cfg = RerankerConfig(scoring="head", window_size=4, stride=2, long_list="tournament", chunk_layout="interleaved")
    tour = Reranker(tiny_model, tokenizer, cfg).rerank(QUERY, DOCS)
    leaders = sorted(sorted(range(len(DOCS)), key=lambda i: (-own[i], i))[:4])
    final = dict(zip(leaders, plain.rerank(QUERY, [DOCS[k] for k in leaders]).scores))
    assert tour.stats.llm_calls == 3 + 1
    assert tour.order[:4] == sorted(leaders, key=lambda k: (-final[k], k))
    rest = sorted(set(range(len(DOCS))) - set(leaders), key=lambda i: (-own[i], i))
    assert tour.order[4:] == rest
    along = [tour.scores[i] for i in tour.order]
    assert along == sorted(along, reverse=True)
    assert [tour.scores[k] for k in leaders] == pytest.approx([final[k] for k in leaders], abs=1e-4)


def test_window_memo_scores_identical_prompts_once(tiny_model, tokenizer):
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(scoring="head", window_size=4, stride=2, long_list="chunks"))
    rr.window_memo = {}
    calls = _counting(rr)
    first = rr.rerank(QUERY, DOCS)
    rr.config.long_list = "tournament"
    second = rr.rerank(QUERY, DOCS)
    assert sum(calls) == 3 + 1  # the tournament reused the three chunks
    assert second.stats.llm_calls == 4 and second.stats.prefill_seconds >= first.stats.prefill_seconds


def test_calibration_fit_recovers_a_known_model():
    rng = random.Random(0)
    a, c, b = 1.5, -0.8, -1.0
    prompts, labels = [], []
    for _ in range(400):
        shift = rng.gauss(0, 1)
        scores = [rng.gauss(shift, 1.5) for _ in range(10)]
        mean = sum(scores) / len(scores)
        prompts.append(scores)
        labels.append([int(rng.random() < 1 / (1 + math.exp(-(a * s + c * mean + b)))) for s in scores])
    cal = HeadCalibration.fit(prompts, labels, fingerprint="f", l2=0.0)
    assert (cal.weight, cal.prompt_mean_weight, cal.bias) == pytest.approx((a, c, b), abs=0.25)
    probs = [p for s in prompts for p in cal.probabilities(s)]
    assert expected_calibration_error(probs, [y for ys in labels for y in ys]) < 0.03


def test_expected_calibration_error_hand_computed():
    # bins: [0.0,0.1): p 0.05 y 0 -> gap 0.05; [0.9,1.0]: p 0.95, 1.0 with y 1, 0 -> gap |0.975 - 0.5|
    assert expected_calibration_error([0.05, 0.95, 1.0], [0, 1, 0]) == pytest.approx(1 / 3 * 0.05 + 2 / 3 * 0.475)
    with pytest.raises(ValueError):
        expected_calibration_error([], [])


def test_calibration_file_is_tied_to_its_weights(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights one")
    fp = weights_fingerprint(tmp_path)
    cal = HeadCalibration(weight=1.0, prompt_mean_weight=0.0, bias=0.0, fingerprint=fp)
    cal.save(tmp_path / "calibration.json")
    assert HeadCalibration.load(tmp_path / "calibration.json", fingerprint=fp) == cal
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights two")
    with pytest.raises(ValueError, match="fitted for other weights"):
        HeadCalibration.load(tmp_path / "calibration.json", fingerprint=weights_fingerprint(tmp_path))
    (tmp_path / "bad.json").write_text(json.dumps({"weight": 1.0}))
    with pytest.raises(ValueError, match="not a head calibration file"):
        HeadCalibration.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="weight must be positive"):
        HeadCalibration(weight=-1.0, prompt_mean_weight=0.0, bias=0.0, fingerprint=fp)


def test_calibration_names_its_chunk_layout_and_a_mismatch_is_reported(tmp_path, tokenizer, caplog):
    from support import make_tiny_llama

    folder = tmp_path / "tiny"
    make_tiny_llama(len(tokenizer), layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "lazyrank.json").write_text(
        json.dumps({"reranker": {"scoring": "head", "long_list": "tournament", "chunk_layout": "interleaved"}})
    )
    fp = weights_fingerprint(folder)
    cal = HeadCalibration.fit([[1.0, 0.0, -1.0], [2.0, 0.5, 0.0]], [[1, 0, 0], [1, 1, 0]], fp, layout="interleaved")
    cal.save(folder / "calibration.json")
    assert HeadCalibration.load(folder / "calibration.json", fingerprint=fp).layout == "interleaved"
    with caplog.at_level("WARNING", logger="rerank.reranker"):
        rr = Reranker.from_pretrained(str(folder))
    assert rr.calibration == cal and rr.config.chunk_layout == "interleaved" and not caplog.records
    with caplog.at_level("WARNING", logger="rerank.reranker"):
        Reranker.from_pretrained(str(folder), chunk_layout="consecutive")
    assert "fitted on interleaved chunks" in caplog.text and "--layout consecutive" in caplog.text
    # Files written before the field existed were all fitted on consecutive chunks.
    old = {k: v for k, v in json.loads((folder / "calibration.json").read_text()).items() if k != "layout"}
    (folder / "calibration.json").write_text(json.dumps(old))
    assert HeadCalibration.load(folder / "calibration.json").layout == "consecutive"
    with pytest.raises(ValueError, match="calibration layout must be one of"):
        HeadCalibration(weight=1.0, prompt_mean_weight=0.0, bias=0.0, fingerprint=fp, layout="zigzag")


def test_calibrated_reranker_returns_per_prompt_probabilities(tiny_model, tokenizer):
    cal = HeadCalibration(weight=0.7, prompt_mean_weight=-0.3, bias=0.2, fingerprint="x")
    cfg = RerankerConfig(scoring="head", window_size=4, stride=2, long_list="chunks")
    raw = Reranker(tiny_model, tokenizer, cfg).rerank(QUERY, DOCS)
    res = Reranker(tiny_model, tokenizer, cfg, calibration=cal).rerank(QUERY, DOCS)
    want = [p for o in (0, 4, 8) for p in cal.probabilities(raw.scores[o : o + 4])]
    assert res.score_kind == "probability" and res.scores == pytest.approx(want, abs=1e-5)
    assert res.order == sorted(range(len(DOCS)), key=lambda i: (-res.scores[i], i))
    # The server passes probabilities through (a threshold means the same in every request).
    served = relevance_scores(res)
    assert served == pytest.approx(res.scores, abs=1e-6)
    with pytest.raises(ValueError, match="scoring='head' only"):
        Reranker(tiny_model, tokenizer, RerankerConfig(scoring="single_pass"), calibration=cal)
    # A calibrated tournament sends the best 4 of the whole list (by probability) to the final prompt.
    cfg = RerankerConfig(scoring="head", window_size=4, stride=2, long_list="tournament")
    tour = Reranker(tiny_model, tokenizer, cfg, calibration=cal).rerank(QUERY, DOCS)
    leaders = sorted(sorted(range(len(DOCS)), key=lambda i: (-want[i], i))[:4])
    assert sorted(tour.order[:4]) == leaders
    assert tour.order[4:] == sorted(set(range(len(DOCS))) - set(leaders), key=lambda i: (-want[i], i))


def test_calibration_kinds_fall_back_to_the_chunk_set_and_validate(tmp_path):
    cal = HeadCalibration(weight=1.0, prompt_mean_weight=-0.5, bias=0.0, fingerprint="x", final_prompt=[2.0, 0.0, -1.0])
    assert cal.final_prompt == (2.0, 0.0, -1.0)  # a JSON list becomes a tuple
    assert cal.parameters("single") == cal.parameters("chunk") == (1.0, -0.5, 0.0)
    # final: sigmoid(2 s - 1) for s = 1, 0; chunk: sigmoid(s - 0.5 * 0.5)
    assert cal.probabilities([1.0, 0.0], "final") == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])
    assert cal.probabilities([1.0, 0.0]) == pytest.approx([1 / (1 + math.exp(-0.75)), 1 / (1 + math.exp(0.25))])
    cal.save(tmp_path / "c.json")
    assert HeadCalibration.load(tmp_path / "c.json") == cal
    single = HeadCalibration(weight=3.0, prompt_mean_weight=0.0, bias=1.0, fingerprint="x", fitted_on="top-20")
    both = cal.with_kind("single", single)
    assert both.single_prompt == (3.0, 0.0, 1.0) and both.final_prompt == cal.final_prompt
    assert both.fitted_on.endswith("single prompts: top-20")
    assert cal.with_kind("chunk", single) == single  # a new chunk set replaces the whole calibration
    with pytest.raises(ValueError, match="other weights"):
        cal.with_kind("final", HeadCalibration(weight=1.0, prompt_mean_weight=0.0, bias=0.0, fingerprint="y"))
    with pytest.raises(ValueError, match="prompt kind must be one of"):
        cal.probabilities([1.0], "window")
    with pytest.raises(ValueError, match="final_prompt must be"):
        HeadCalibration(weight=1.0, prompt_mean_weight=0.0, bias=0.0, fingerprint="x", final_prompt=[1.0, 0.0])
    with pytest.raises(ValueError, match="single_prompt weight must be positive"):
        HeadCalibration(weight=1.0, prompt_mean_weight=0.0, bias=0.0, fingerprint="x", single_prompt=[0.0, 0.0, 0.0])


def test_calibrated_reranker_reads_each_kind_of_prompt_with_its_own_parameters(tiny_model, tokenizer):
    cal = HeadCalibration(
        weight=0.7,
        prompt_mean_weight=-0.3,
        bias=0.2,
        fingerprint="x",
        final_prompt=(1.3, 0.4, -2.0),
        single_prompt=(0.2, 0.0, 1.5),
    )
    cfg = RerankerConfig(scoring="head", window_size=4, stride=2, long_list="tournament", chunk_layout="interleaved")
    rr = Reranker(tiny_model, tokenizer, cfg, calibration=cal)
    seen = []
    rr.prompt_observer = lambda kind, window, ranking: seen.append((kind, list(window.passages), ranking.scores))
    res = rr.rerank(QUERY, DOCS)
    assert [kind for kind, *_ in seen] == ["chunk", "chunk", "chunk", "final"]
    assert [p for _, p, _ in seen[:3]] == [[DOCS[i] for i in m] for m in chunk_members(11, 4, "interleaved")]
    # The final prompt's passages get its own parameters; the order is its raw order (a > 0).
    _, finalists, readouts = seen[3]
    final = dict(zip(finalists, cal.probabilities(readouts, "final")))
    top = [DOCS[i] for i in res.order[:4]]
    assert sorted(top, key=finalists.index) == finalists
    assert [res.scores[i] for i in res.order[:4]] == pytest.approx([final[d] for d in top], abs=1e-6)
    assert sorted(final.values(), reverse=True) == pytest.approx([final[d] for d in top], abs=1e-6)
    # A list that fits one prompt is read as a single prompt.
    seen.clear()
    short = rr.rerank(QUERY, DOCS[:3])
    ((kind, _, readouts),) = seen
    assert kind == "single" and short.scores == pytest.approx(cal.probabilities(readouts, "single"), abs=1e-6)
    assert readouts == rr.read_windows([Window(query=QUERY, passages=DOCS[:3])])[0].scores  # raw, uncalibrated


def _observed_tournament(model, tokenizer, **settings) -> tuple[Reranker, list]:
    """An interleaved tournament over prompts of 4, and the (kind, passages, raw scores) of every prompt
    it reads, in order."""
    cfg = RerankerConfig(
        scoring="head", window_size=4, stride=2, long_list="tournament", chunk_layout="interleaved", **settings
    )
    rr = Reranker(model, tokenizer, cfg)
    seen: list = []
    rr.prompt_observer = lambda kind, window, ranking: seen.append((kind, list(window.passages), ranking.scores))
    return rr, seen


@pytest.mark.parametrize("final_order", ["first_stage", "chunk_score"])
def test_the_final_prompt_reads_its_leaders_in_the_configured_order(tiny_model, tokenizer, final_order):
    """Interleaved chunks, then the 4 best raw chunk scores meet in a final prompt: in first-stage
    order, or best chunk score first; the same leaders either way, and the top is the final prompt's."""
    rr, seen = _observed_tournament(tiny_model, tokenizer, final_order=final_order)
    res = rr.rerank(QUERY, DOCS)
    chunk_score = {p: s for kind, passages, scores in seen[:3] for p, s in zip(passages, scores)}
    best = sorted(DOCS, key=lambda d: (-chunk_score[d], DOCS.index(d)))[:4]
    kind, finalists, readouts = seen[3]
    assert kind == "final" and sorted(finalists) == sorted(best)
    expected = sorted(best, key=DOCS.index) if final_order == "first_stage" else best
    assert finalists == expected
    by_final = sorted(finalists, key=lambda d: (-readouts[finalists.index(d)], DOCS.index(d)))
    assert [DOCS[i] for i in res.order[:4]] == by_final
    with pytest.raises(ValueError, match="final_order must be one of"):
        RerankerConfig(scoring="head", final_order="bm25")


def test_a_leaders_final_score_can_blend_in_its_chunk_score(tiny_model, tokenizer):
    """With final_chunk_weight w the leaders are ordered by (1 - w) * final + w * chunk, both reads of
    the same passage; the prompts read are the same as without."""
    rr, seen = _observed_tournament(tiny_model, tokenizer)
    plain = rr.rerank(QUERY, DOCS)
    rr.config.final_chunk_weight = 0.25
    blended = rr.rerank(QUERY, DOCS)
    assert seen[:4] == seen[4:]  # the same prompts, the same readouts
    chunk_score = {p: s for kind, passages, scores in seen[:3] for p, s in zip(passages, scores)}
    _, finalists, readouts = seen[3]
    mix = {d: 0.75 * f + 0.25 * chunk_score[d] for d, f in zip(finalists, readouts)}
    top = [DOCS[i] for i in blended.order[:4]]
    assert top == sorted(finalists, key=lambda d: (-mix[d], DOCS.index(d)))
    assert [blended.scores[i] for i in blended.order[:4]] == pytest.approx([mix[d] for d in top])
    assert blended.order[4:] == plain.order[4:]  # the others follow as before
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="final_chunk_weight must be a number in"):
            RerankerConfig(scoring="head", final_chunk_weight=bad)


def test_the_final_prompts_best_can_be_read_once_more_alone(tiny_model, tokenizer):
    """With final_reread=k one more prompt reads the tournament's best k in first-stage order; they are
    ordered by that read, the others stay where they were, and scores never rise down the order."""
    rr, seen = _observed_tournament(tiny_model, tokenizer)
    plain = rr.rerank(QUERY, DOCS)
    rr.config.final_reread = 3
    again = rr.rerank(QUERY, DOCS)
    assert [kind for kind, *_ in seen] == ["chunk"] * 3 + ["final"] + ["chunk"] * 3 + ["final", "final"]
    assert seen[4:8] == seen[:4] and again.stats.llm_calls == plain.stats.llm_calls + 1
    _, reread, readouts = seen[8]
    assert reread == [DOCS[i] for i in sorted(plain.order[:3])]  # the best 3, in first-stage order
    assert [DOCS[i] for i in again.order[:3]] == sorted(
        reread, key=lambda d: (-readouts[reread.index(d)], DOCS.index(d))
    )
    assert again.order[3:] == plain.order[3:]
    ordered = [again.scores[i] for i in again.order]
    assert ordered == sorted(ordered, reverse=True)
    for bad in (1, 5, 2.0, True):
        with pytest.raises(ValueError, match="final_reread must be None or an integer from 2 to window_size"):
            RerankerConfig(scoring="head", window_size=4, stride=2, final_reread=bad)


def test_disk_memo_resumes_and_a_read_only_memo_scores_nothing(tmp_path, tiny_model, tokenizer):
    from rerank.data.window_memo import DiskMemo

    cfg = RerankerConfig(scoring="head", window_size=4, stride=2, long_list="chunks")
    rr = Reranker(tiny_model, tokenizer, cfg)
    rr.window_memo = DiskMemo(tmp_path / "memo.jsonl")
    first = rr.rerank(QUERY, DOCS)
    assert len((tmp_path / "memo.jsonl").read_text().splitlines()) == 3  # one line per chunk
    rr.window_memo = DiskMemo(tmp_path / "memo.jsonl", read_only=True)
    again = rr.rerank(QUERY, DOCS)
    assert again.order == first.order and again.scores == first.scores
    assert again.stats.prefill_seconds == first.stats.prefill_seconds  # each prompt's cost as first measured
    with pytest.raises(KeyError, match="read-only memo"):
        rr.rerank(QUERY, DOCS[:5])


def _judged_collection(tmp_path, docs: int, queries: int) -> tuple:
    """A collection folder where query i's one relevant doc is d(i % docs), and a weights folder."""
    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": "t"}) + "\n" for i in range(docs)))
    (coll / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": "q"}) + "\n" for i in range(queries))
    )
    (coll / "qrels.txt").write_text("".join(f"q{i} 0 d{i % docs} 1\n" for i in range(queries)))
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "adapter_model.safetensors").write_bytes(b"weights")
    return coll, weights


def test_fit_calibration_script_adds_a_kind_from_prompt_records(tmp_path):
    script = load_script("scripts/fit_calibration.py")
    coll, weights = _judged_collection(tmp_path, 3, 8)
    rng = random.Random(1)
    records = []
    for i in range(8):
        final = {"kind": "final", "docids": ["d0", "d1", "d2"], "readouts": [rng.gauss(0, 1) for _ in range(3)]}
        final["readouts"][i % 3] += 1.5  # the relevant one reads higher, not always highest
        chunk = {"kind": "chunk", "docids": ["d3", "d4", "d5"], "readouts": [rng.gauss(-2, 1) for _ in range(3)]}
        records.append({"qid": f"q{i}", "method": "tournament", "layout": "interleaved", "prompts": [chunk, final]})
    path = tmp_path / "100-prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["--collection", str(coll), "--records", str(path), "--weights", str(weights)]
    with pytest.raises(SystemExit, match="--kind chunk first"):
        script.main([*args, "--kind", "final"])
    fp = weights_fingerprint(weights)
    HeadCalibration(weight=1.0, prompt_mean_weight=0.0, bias=-3.0, fingerprint=fp, layout="interleaved").save(
        weights / "calibration.json"
    )
    cal = script.main([*args, "--kind", "final"])
    prompts = [r["prompts"][1]["readouts"] for r in records]
    labels = [[int(k == i % 3) for k in range(3)] for i in range(8)]
    want = HeadCalibration.fit(prompts, labels, fp)
    assert cal.final_prompt == pytest.approx((want.weight, want.prompt_mean_weight, want.bias))
    assert cal.parameters("chunk") == (1.0, 0.0, -3.0) and cal.single_prompt is None
    assert HeadCalibration.load(weights / "calibration.json", fingerprint=fp) == cal
    chunks = tmp_path / "chunks.jsonl"
    chunks.write_text(json.dumps({"qid": "q0", "docids": ["d0"], "scores": [1.0], "score_kind": "head_logit"}) + "\n")
    with pytest.raises(SystemExit, match="final prompts are recorded only by"):
        script.main(["--collection", str(coll), "--records", str(chunks), "--weights", str(weights), "--kind", "final"])


def test_relevance_scores_keep_probabilities_monotone():
    res = RankingResult.from_scores([1, 0, 2], [0.4, 0.7, 0.1], 3, None, "probability")
    assert relevance_scores(res) == [0.4, 0.7, 0.1]


def test_list_far_over_the_context_is_ranked_by_the_method(tiny_model, tokenizer):
    docs = [f"Doc {i} about {'bees' if i % 7 == 0 else 'rope'}." for i in range(45)]
    for method, calls in (("tournament", 12 + 1), ("one_prompt", 12)):  # one_prompt cannot: chunks
        cfg = RerankerConfig(scoring="head", window_size=4, stride=2, long_list=method, max_context=400)
        res = Reranker(tiny_model, tokenizer, cfg).rerank(QUERY, docs)
        assert sorted(res.order) == list(range(45))
        assert res.stats.fallback == ("tournament" if method == "tournament" else "chunks")
        assert res.stats.llm_calls == calls


def test_tournament_without_deep_leaders_reuses_the_first_chunk(tiny_model, tokenizer):
    cfg = RerankerConfig(scoring="head", window_size=4, stride=2, long_list="tournament", deep_leaders=0)
    res = Reranker(tiny_model, tokenizer, cfg).rerank(QUERY, DOCS)
    assert res.stats.llm_calls == 3  # the chunks only: the final prompt would repeat the first chunk
    first = Reranker(tiny_model, tokenizer, RerankerConfig(scoring="head")).rerank(QUERY, DOCS[:4])
    assert res.order[:4] == first.order  # the top is the first window as the model ranks it alone


def test_fit_calibration_script_reads_both_record_kinds(tmp_path):
    """scripts/fit_calibration.py fits the same calibration from depth_methods chunk records and from
    the same readouts stored as an eval/bench_head_speed.py variant."""
    import json

    script = load_script("scripts/fit_calibration.py")
    coll, weights = _judged_collection(tmp_path, 4, 6)
    readouts = {f"q{i}": [2.0 if k == i % 4 else -1.0 - k for k in range(4)] for i in range(6)}
    readouts["q5"] = [0.5, -0.5, 1.0, -2.0]  # one noisy query keeps the fit finite
    docids = [f"d{k}" for k in range(4)]
    chunk = tmp_path / "chunks.jsonl"
    chunk.write_text(
        "".join(
            json.dumps({"qid": q, "docids": docids, "scores": s, "score_kind": "head_logit"}) + "\n"
            for q, s in readouts.items()
        )
    )
    bench = tmp_path / "bench.records.jsonl"
    bench.write_text(
        "".join(
            json.dumps(
                {
                    "collection": "coll",
                    "qid": q,
                    "docids": docids,
                    "dense": [0.0] * 4,
                    "pruned": {"p +tuned": {"scores": s}},
                }
            )
            + "\n"
            for q, s in readouts.items()
        )
    )
    common = ["--collection", str(coll), "--weights", str(weights), "--window", "4"]
    from_chunks = script.main([*common, "--records", str(chunk), "--out", str(tmp_path / "a.json")])
    from_bench = script.main(
        [*common, "--records", str(bench), "--variant", "p +tuned", "--out", str(tmp_path / "b.json")]
    )
    assert from_chunks.weight > 0 and (
        from_chunks.weight,
        from_chunks.bias,
        from_chunks.prompt_mean_weight,
    ) == pytest.approx((from_bench.weight, from_bench.bias, from_bench.prompt_mean_weight))
    assert "p +tuned" in from_bench.fitted_on
    # the same readouts stored as if read in two interleaved prompts of 2 fit other prompt means
    interleaved = script.main([*common[:-1], "2", "--layout", "interleaved", "--records", str(chunk)])
    assert "interleaved prompts of 2" in interleaved.fitted_on
    assert interleaved.prompt_mean_weight != pytest.approx(from_chunks.prompt_mean_weight)
    with pytest.raises(SystemExit):
        script.main([*common, "--records", str(bench), "--variant", "missing", "--out", str(tmp_path / "c.json")])


def test_three_hundred_passages_rank_by_an_interleaved_tournament(tiny_model, tokenizer):
    # More passages than the context holds: 15 interleaved prompts of 20 and one final prompt.
    docs = [
        f"Passage {i}: honey bees {'shiver' if i % 7 == 0 else 'forage'} beside hive number {i} in the meadow of "
        f"field {i % 11}, close to the old orchard wall and the river."
        for i in range(300)
    ]
    cfg = RerankerConfig(scoring="head", long_list="tournament", chunk_layout="interleaved")
    rr = Reranker(tiny_model, tokenizer, cfg)
    assert not rr.fits(Window(QUERY, docs))
    res = rr.rerank(QUERY, docs)
    assert (res.stats.fallback, res.stats.chunk_layout, res.stats.llm_calls) == ("tournament", "interleaved", 16)
    assert sorted(res.order) == list(range(300))
    along = [res.scores[i] for i in res.order]
    assert along == sorted(along, reverse=True)


def _tournament_model_and_collection(tmp_path, tokenizer, layers: int) -> tuple:
    """A tiny head model folder that recommends an interleaved tournament of windows of 4, and a
    collection folder of one's own: 10 passages, 2 judged queries, a given run (q2's reversed)."""
    from support import make_tiny_llama

    folder = tmp_path / "tiny"
    make_tiny_llama(len(tokenizer), layers=layers).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = {"scoring": "head", "long_list": "tournament", "chunk_layout": "interleaved", "window_size": 4}
    (folder / "lazyrank.json").write_text(json.dumps({"reranker": settings | {"stride": 2}}))
    coll = tmp_path / "mine"
    coll.mkdir()
    docs = {f"d{i}": DOCS[i] for i in range(10)}
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in docs.items()))
    queries = {"q1": QUERY, "q2": "where do wasps nest"}
    (coll / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (coll / "qrels.txt").write_text("q1 0 d0 1\nq1 0 d3 1\nq2 0 d5 1\n")
    ranked = {"q1": list(docs), "q2": list(reversed(docs))}
    (coll / "run.given.trec").write_text(
        "".join(f"{q} Q0 {d} {r + 1} {10 - r} given\n" for q, ds in ranked.items() for r, d in enumerate(ds))
    )
    return folder, coll, docs, queries, ranked


def test_prompt_readouts_records_every_prompt_of_a_users_collection(tmp_path, tokenizer):
    """eval/prompt_readouts.py on a collection folder of one's own (its given run reranked): per query
    the interleaved chunks then the final prompt, each with its docids and the raw readouts a
    Reranker reads for that window; then fit_calibration adds the final set from those records."""
    folder, coll, docs, queries, ranked = _tournament_model_and_collection(tmp_path, tokenizer, layers=2)
    script = load_script("eval/prompt_readouts.py")
    out = script.main(["--collection", str(coll), "--depth", "10", "--model", str(folder), "--work_dir", str(tmp_path)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["qid"] for r in records] == ["q1", "q2"] and {r["method"] for r in records} == {"tournament"}
    rr = Reranker.from_pretrained(str(folder))
    assert (rr.config.window_size, rr.config.stride) == (4, 2)  # the folder's recommendation
    assert Reranker.from_pretrained(str(folder), window_size=6, stride=3).config.window_size == 6  # the caller's
    for rec in records:
        kinds = [p["kind"] for p in rec["prompts"]]
        assert kinds == ["chunk", "chunk", "chunk", "final"]
        cut = [[ranked[rec["qid"]][k] for k in m] for m in chunk_members(10, 4, "interleaved")]
        assert [p["docids"] for p in rec["prompts"][:3]] == cut
        final = rec["prompts"][3]["docids"]
        assert len(final) == 4 and final == sorted(final, key=ranked[rec["qid"]].index)  # first-stage order
        for prompt in rec["prompts"]:
            window = Window(query=queries[rec["qid"]], passages=[docs[d] for d in prompt["docids"]])
            assert prompt["readouts"] == pytest.approx(rr.read_windows([window])[0].scores, abs=1e-5)
    # Resumed (an interrupted run, or the same command again): the queries done are kept, none twice.
    lines = out.read_text().splitlines()
    lines_cut = lines[:1] + [lines[1][: len(lines[1]) // 2]]  # killed while writing the second query
    out.write_text("\n".join(lines_cut))
    script.main(["--collection", str(coll), "--depth", "10", "--model", str(folder), "--work_dir", str(tmp_path)])
    again = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert [r["qid"] for r in again] == ["q1", "q2"] and again == records
    with pytest.raises(SystemExit, match="neither one of"):
        script.main(["--collection", str(tmp_path / "missing")])


def test_a_train_split_becomes_a_development_folder_that_depth_methods_reranks(tmp_path, tokenizer):
    """scripts/split_collection.py keeps one split's judged queries (a slice by id) with their qrels
    and a link to the corpus; eval/depth_methods.py reranks that folder from BM25 (no run of its own),
    and a method's passage budget is what its prompts are cut to."""
    from support import make_tiny_llama

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    words = ["bees", "wasps", "ants", "hives", "honey", "queens", "drones", "pollen", "nectar", "wax"]
    docs = {
        f"d{i}": f"{words[i % 10]} {words[(i * 3) % 10]} " + " ".join(words[(i + k) % 10] for k in range(40))
        for i in range(12)
    }
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in docs.items())
    )
    queries = {"1": "bees honey", "2": "wasps nest", "3": "ants wax", "4": "queens pollen", "9": "drones"}
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n1\td0\t1\n2\td1\t1\n3\td2\t1\n4\td3\t0\n")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n9\td6\t1\n")
    (beir / "run.bm25.trec").write_text("9 Q0 d6 1 1.0 bm25\n")  # the test queries' run: not carried over
    split = load_script("scripts/split_collection.py")
    dev = tmp_path / "dev"
    assert split.split_collection(beir, "train", dev, skip=1) == ["2", "3"]  # "4" has no relevant passage
    assert (dev / "corpus.jsonl").is_symlink() and not (dev / "run.bm25.trec").exists()
    assert (dev / "qrels.txt").read_text() == "2 0 d1 1\n3 0 d2 1\n"
    with pytest.raises(SystemExit, match="no judgements for split 'dev'"):
        split.split_collection(beir, "dev", tmp_path / "x")

    folder = tmp_path / "tiny"
    make_tiny_llama(len(tokenizer), layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "lazyrank.json").write_text(json.dumps({"reranker": {"scoring": "head", "long_list": "tournament"}}))
    script = load_script("eval/depth_methods.py")
    args = ["--collection", str(dev), "--model", str(folder), "--work_dir", str(tmp_path / "work"), "--depths", "10"]
    args += ["--precision", "fp32"]  # cells read in another precision carry its name
    out = tmp_path / "dev.json"
    table = script.main([*args, "--methods", "tournament,tournament:8", "--out", str(out)])
    cells = table["dev"]["10"]
    assert cells["tournament"]["queries"] == cells["tournament:8"]["queries"] == 2
    assert cells["tournament:8"]["prompt_tokens_per_query"] < cells["tournament"]["prompt_tokens_per_query"]
    assert (tmp_path / "work" / "dev" / "bm25.trec").is_file()  # BM25 over the linked corpus, cached
    assert json.loads(out.read_text())["dev"]["10"]["tournament"] == cells["tournament"]
    # Again: every record is read back, nothing is scored twice.
    memo = (tmp_path / "work" / "dev" / "memo.jsonl").read_text()
    assert (
        script.main([*args, "--methods", "tournament", "--out", str(out)])["dev"]["10"]["tournament"]["ndcg@10"]
        == cells["tournament"]["ndcg@10"]
    )
    assert (tmp_path / "work" / "dev" / "memo.jsonl").read_text() == memo


def test_bench_depth_speed_times_dense_and_pruned_chunks_on_the_same_lists(tmp_path, tokenizer):
    """eval/bench_depth_speed.py ranks every query with each variant back to back: dense chunks are
    what from_pretrained() ranks, a chunk_pruning schedule computes fewer token-layers, and a rerun
    resumes from its records without ranking anything again."""
    folder, coll, docs, queries, ranked = _tournament_model_and_collection(tmp_path, tokenizer, layers=4)
    script = load_script("eval/bench_depth_speed.py")
    out = tmp_path / "speed.json"
    args = ["--collection", str(coll), "--depth", "10", "--model", str(folder), "--out", str(out), "--threads", "1"]
    args += ["--limit_queries", "2"]
    table = script.main([*args, "--variants", "dense", "chunk_pruning=0.25:0.5,0.5:0.2"])
    dense, pruned = table["dense"], table["chunk_pruning=0.25:0.5,0.5:0.2"]
    assert table["queries"] == 2 and dense["prompts_per_query"] == pruned["prompts_per_query"] == 3 + 1
    assert dense["computed_fraction"] == 1.0 and pruned["computed_fraction"] < 1.0
    assert dense["x_dense"] == 1.0 and dense["top10_overlap_dense"] == 1.0
    records = [json.loads(line) for line in out.with_suffix(".records.jsonl").read_text().splitlines()]
    rr = Reranker.from_pretrained(str(folder))
    for rec in records:
        candidates = [docs[d] for d in ranked[rec["qid"]]]
        assert rec["variants"]["dense"]["order"] == rr.rerank(queries[rec["qid"]], candidates).order
    # The same command again ranks nothing; an added variant ranks only itself, and minilm is timed too.
    lines = out.with_suffix(".records.jsonl").read_text()
    assert script.main([*args, "--variants", "dense", "chunk_pruning=0.25:0.5,0.5:0.2"]) == table
    assert out.with_suffix(".records.jsonl").read_text() == lines
    more = script.main([*args, "--variants", "dense", "minilm", "chunk_passage_tokens=3"])
    assert more["dense"]["ndcg@10"] == dense["ndcg@10"] and more["minilm"]["seconds_per_query"] > 0
    assert more["chunk_passage_tokens=3"]["prompt_tokens_per_query"] < dense["prompt_tokens_per_query"]
    with pytest.raises(SystemExit, match="not RerankerConfig fields"):
        script.main([*args, "--variants", "dense", "chunk_tokens=3"])
    with pytest.raises(SystemExit, match="is not dense, minilm or FIELD=VALUE"):
        script.main([*args, "--variants", "fast"])
    # Records timed on 1 thread are not topped up with timings on 2.
    with pytest.raises(SystemExit, match="was timed with .* pass another --out"):
        script.main([*args, "--variants", "dense", "--threads", "2"])
    assert out.with_suffix(".records.jsonl").read_text().startswith(lines)


def test_chunk_passage_tokens_cuts_the_chunks_and_not_the_final_prompt(tiny_model, tokenizer):
    base = dict(scoring="head", window_size=4, stride=2, long_list="tournament", chunk_layout="interleaved")
    rr = Reranker(tiny_model, tokenizer, RerankerConfig(**base, max_passage_tokens=12, chunk_passage_tokens=4))
    rr.window_memo = {}
    got = rr.rerank(QUERY, DOCS)
    cut = Reranker(tiny_model, tokenizer, RerankerConfig(**base, max_passage_tokens=4))
    full = Reranker(tiny_model, tokenizer, RerankerConfig(**base, max_passage_tokens=12))
    # The three chunk prompts are exactly those of a reranker cutting every passage to 4 tokens.
    chunk_prompts = {
        tuple(cut.encode(Window(query=QUERY, passages=[DOCS[i] for i in m])).input_ids)
        for m in chunk_members(len(DOCS), 4, "interleaved")
    }
    final = Window(query=QUERY, passages=[DOCS[i] for i in sorted(got.order[:4])])
    final_prompt = tuple(full.encode(final).input_ids)
    assert {ids for ids, _ in rr.window_memo} == chunk_prompts | {final_prompt}
    assert rr.window_memo[(final_prompt, None)].scores == pytest.approx(full.read_windows([final])[0].scores, abs=1e-5)
    assert got.stats.prompt_tokens == sum(len(ids) for ids in chunk_prompts) + len(final_prompt)
    # Each chunk is shorter than the same chunk read at the final prompt's budget.
    for m in chunk_members(len(DOCS), 4, "interleaved"):
        window = Window(query=QUERY, passages=[DOCS[i] for i in m])
        assert len(cut.encode(window).input_ids) < len(full.encode(Window(window.query, window.passages)).input_ids)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="chunk_passage_tokens must be a positive integer or None"):
            RerankerConfig(**base, chunk_passage_tokens=bad)


@pytest.mark.skipif(not cpu_supports("bf16"), reason="this CPU has no native bf16 kernels")
def test_bench_depth_speed_times_each_precision_with_its_own_model(tmp_path, tokenizer):
    """A ``precision=`` variant loads the weights again in that precision: fp32 ranks as the dense
    reranker does, bf16 as a reranker built with ``precision="bf16"``; an unknown precision is refused
    by name before anything loads."""
    folder, coll, docs, queries, ranked = _tournament_model_and_collection(tmp_path, tokenizer, layers=4)
    script = load_script("eval/bench_depth_speed.py")
    out = tmp_path / "speed.json"
    args = ["--collection", str(coll), "--depth", "10", "--model", str(folder), "--out", str(out), "--threads", "1"]
    args += ["--limit_queries", "2"]
    with pytest.raises(SystemExit, match="'precision=int4'.*precision must be one of"):
        script.main([*args, "--variants", "dense", "precision=int4"])
    assert not out.with_suffix(".records.jsonl").exists()
    table = script.main([*args, "--variants", "precision=fp32", "precision=bf16"])
    assert table["precision=bf16"]["prompts_per_query"] == table["precision=fp32"]["prompts_per_query"]
    records = [json.loads(line) for line in out.with_suffix(".records.jsonl").read_text().splitlines()]
    fp32 = Reranker.from_pretrained(str(folder), precision="fp32")
    bf16 = Reranker.from_pretrained(str(folder), precision="bf16")
    assert bf16.config.precision == "bf16"
    for rec in records:
        candidates = [docs[d] for d in ranked[rec["qid"]]]
        assert rec["variants"]["precision=fp32"]["order"] == fp32.rerank(queries[rec["qid"]], candidates).order
        assert rec["variants"]["precision=bf16"]["order"] == bf16.rerank(queries[rec["qid"]], candidates).order
