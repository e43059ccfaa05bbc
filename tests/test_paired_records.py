"""Per-query comparison of two record files (eval/paired_records.py)."""

from __future__ import annotations

import json
import math

import pytest
from support import load_script

from rerank.evaluation import paired_randomization

paired = load_script("eval/paired_records.py")


def _records(path, orders):
    with open(path, "w") as fh:
        for qid, order in orders.items():
            fh.write(json.dumps({"qid": qid, "docids": ["d0", "d1", "d2"], "order": order}) + "\n")
    return path


def test_compare_hand_computed(tmp_path):
    qrels = {"q1": {"d0": 1}, "q2": {"d2": 1}, "q3": {"d1": 1}}
    a = paired.ranked(_records(tmp_path / "a.jsonl", {"q1": [0, 1, 2], "q2": [2, 0, 1], "q9": [0, 1, 2]}))
    b = paired.ranked(_records(tmp_path / "b.jsonl", {"q1": [1, 0, 2], "q2": [2, 1, 0], "q3": [1, 0, 2]}))
    cell = paired.compare(qrels, a, b)
    # common judged queries: q1 (a: relevant first = 1; b: second = 1/log2(3)) and q2 (both first)
    assert cell["queries"] == 2 and cell["a_better"] == 1 and cell["b_better"] == 0
    assert cell["ndcg@10_a"] == 1.0
    assert cell["ndcg@10_b"] == pytest.approx(round((1 / math.log2(3) + 1) / 2, 4))
    assert 0.0 < cell["p_two_sided"] <= 1.0
    # one side split over two files reads the same as one file
    _records(tmp_path / "b1.jsonl", {"q1": [1, 0, 2]})
    _records(tmp_path / "b2.jsonl", {"q2": [2, 1, 0], "q3": [1, 0, 2]})
    assert paired.ranked(f"{tmp_path / 'b1.jsonl'},{tmp_path / 'b2.jsonl'}") == b
    with pytest.raises(ValueError, match="share no judged query"):
        paired.compare(qrels, {"q9": a["q9"]}, b)


def test_paired_randomization_is_symmetric_and_checks_lengths():
    xs, ys = [0.9, 0.2, 0.7, 0.4, 0.6], [0.5, 0.3, 0.6, 0.1, 0.2]
    assert paired_randomization(xs, ys) == paired_randomization(ys, xs)  # same seed, same flips
    assert paired_randomization(xs, xs) == 1.0
    with pytest.raises(ValueError, match="equally long"):
        paired_randomization([0.1], [0.1, 0.2])


def test_reports_on_a_folder_of_ones_own_add_cells_to_one_json(tmp_path):
    """paired_records and leader_recall read a collection folder's qrels (graded >= 2 when its grades
    go above 1) and each run adds its cell to the report beside the others."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": d}) + "\n" for d in ("d0", "d1", "d2")))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "x"}) + "\n")
    (folder / "qrels.txt").write_text("q1 0 d1 1\nq1 0 d2 2\n")  # graded: only d2 counts as relevant
    a = _records(tmp_path / "a.jsonl", {"q1": [2, 0, 1]})
    b = _records(tmp_path / "b.jsonl", {"q1": [0, 1, 2]})
    out = tmp_path / "report.json"
    cell = paired.main(["--collection", str(folder), str(a), str(b), "--label", "ab", "--out", str(out)])
    assert (cell["a_better"], cell["b_better"]) == (1, 0)
    recall = load_script("eval/leader_recall.py")
    shares = recall.main(
        ["--collection", str(folder), "--records", str(b), "--leaders", "2", "--label", "b", "--out", str(out)]
    )
    # d2 (grade 2) is the only relevant candidate; b ranks it third, the first stage too
    assert shares["relevant_candidates"] == 1
    assert shares["reranked_top_leaders"] == shares["first_stage_top_leaders"] == 0.0
    assert shares["reranked_top10"] == 1.0
    assert set(json.loads(out.read_text())) == {"ab", "b"}
