"""Resuming appended JSONL logs (rerank.data.resume) and refusing resumes under other settings."""

from __future__ import annotations

import builtins
import json
import os
import sys
from pathlib import Path

import pytest
from support import load_script

from rerank.data.collection import recover_records as recover_records_from_data
from rerank.data.resume import append_record, check_same_settings, recover_records, save_settings

GOOD = [{"qid": f"q{i}", "ranking": [f"d{i}", "d0"]} for i in range(5)]


def _write_log(path: Path, records: list[dict], tail: str = "") -> bytes:
    """A log as an interrupted run leaves it: whole lines, then ``tail`` (a torn write)."""
    data = "".join(json.dumps(r) + "\n" for r in records) + tail
    path.write_text(data, encoding="utf-8")
    return data.encode("utf-8")


def test_data_module_exposes_the_same_mechanism():
    assert recover_records_from_data is recover_records


def test_missing_file_is_an_empty_log(tmp_path):
    assert recover_records(tmp_path / "nope.jsonl") == []
    assert not (tmp_path / "nope.jsonl").exists()  # recovering creates nothing


def test_torn_tail_is_cut_and_the_next_append_starts_a_fresh_line(tmp_path):
    log = tmp_path / "log.jsonl"
    whole = _write_log(log, GOOD, tail='{"qid": "q5", "rank')
    assert recover_records(log) == GOOD
    assert log.read_bytes() == whole[: whole.rindex(b"\n") + 1]  # exactly the good lines, byte for byte
    with open(log, "a", encoding="utf-8") as fh:  # what a resumed run does next
        append_record(fh, {"qid": "q5"})
        append_record(fh, {"qid": "q6"})
    again = recover_records(log)
    assert again == GOOD + [{"qid": "q5"}, {"qid": "q6"}]  # exact count: nothing lost, nothing doubled
    assert len(log.read_text().splitlines()) == len(GOOD) + 2


@pytest.mark.parametrize(
    "tail",
    [
        b'{"qid"',
        b"\x00\x00\x00\x00",
        b"{broken\n   \n",
        b'["not", "an", "object"]\n',
        b'\n\n{"qid": "q9", "caf' + "\u00e9".encode()[:1],
    ],
)
def test_every_kind_of_bad_last_line_is_cut(tmp_path, tail):
    """Torn JSON, the zero bytes a power loss can leave, trailing blank lines, a non-object, a cut
    UTF-8 character."""
    log = tmp_path / "log.jsonl"
    log.write_bytes(_write_log(log, GOOD) + tail)
    assert recover_records(log) == GOOD
    assert log.read_text().splitlines() == [json.dumps(r) for r in GOOD]


def test_complete_last_record_without_newline_is_kept_and_ended(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[1]))
    assert recover_records(log) == GOOD[:2]
    assert log.read_text().endswith("\n")
    with open(log, "a", encoding="utf-8") as fh:
        append_record(fh, GOOD[2])
    assert recover_records(log) == GOOD[:3]


def test_bad_line_in_the_middle_names_file_and_line_and_changes_nothing(tmp_path):
    log = tmp_path / "log.jsonl"
    data = "".join(json.dumps(r) + "\n" for r in GOOD[:2]) + "{oops\n\n" + json.dumps(GOOD[2]) + "\n"
    log.write_text(data)
    with pytest.raises(ValueError, match=r"log\.jsonl:3: invalid JSON"):
        recover_records(log)
    assert log.read_text() == data  # a refused log is left exactly as it was


def test_project_keeps_only_what_the_caller_needs_and_names_bad_records(tmp_path):
    log = tmp_path / "log.jsonl"
    _write_log(log, GOOD, tail='{"qid": "q5"')
    assert recover_records(log, project=lambda r: r["qid"]) == [r["qid"] for r in GOOD]
    _write_log(log, GOOD[:2] + [{"no_qid": 1}] + GOOD[2:])
    with pytest.raises(ValueError, match=r"log\.jsonl:3: unusable record .*qid"):
        recover_records(log, project=lambda r: r["qid"])


def test_crash_during_repair_keeps_every_good_record(tmp_path, monkeypatch):
    """The old repair rewrote the log with open(path, "w"): a crash mid-rewrite emptied it. Now a crash
    at any write the repair could make leaves every good record in place."""
    log = tmp_path / "log.jsonl"
    whole = _write_log(log, GOOD, tail='{"qid": "q5", "ra')
    real_open = builtins.open

    def crash(*args, **kwargs):
        raise OSError("killed during the repair")

    def open_that_crashes_after_truncating(file, mode="r", *args, **kwargs):
        if "w" in mode:  # a rewrite: the file is emptied, then the process dies
            real_open(file, mode, *args, **kwargs).close()
            raise OSError("killed during the rewrite")
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "truncate", crash)
        m.setattr(builtins, "open", open_that_crashes_after_truncating)
        with pytest.raises(OSError, match="killed"):
            recover_records(log)
    assert log.read_bytes() == whole  # nothing written yet: the torn tail is cut on the next resume
    assert recover_records(log) == GOOD

    # A complete last record that lacks its newline: the repair appends one byte; a crash there too.
    log.write_text(json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[1]))
    with monkeypatch.context() as m:
        m.setattr(os, "write", crash)
        with pytest.raises(OSError, match="killed"):
            recover_records(log)
    assert recover_records(log) == GOOD[:2]


def test_append_record_syncs_each_record(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    with open(tmp_path / "log.jsonl", "a", encoding="utf-8") as fh:
        append_record(fh, {"text": "caf\u00e9\nnew line"})
        append_record(fh, {"text": "b"})
    assert len(synced) == 2
    assert recover_records(tmp_path / "log.jsonl") == [{"text": "caf\u00e9\nnew line"}, {"text": "b"}]


# ---------------------------------------------------------------------------------- settings
def test_check_same_settings_names_every_change(tmp_path):
    path = tmp_path / "settings.json"
    check_same_settings(path, {"model": "a"})  # nothing saved: nothing to compare with
    save_settings(path, {"model": "a", "budget": 100, "pruning": (0.1, 0.5), "batch_size": 8})
    assert not (tmp_path / "settings.json.tmp").exists()
    # tuples compare as the lists they were saved as; ignored and new keys are no change
    check_same_settings(
        path, {"model": "a", "pruning": (0.1, 0.5), "batch_size": 1, "new_field": 3}, ignore={"batch_size"}
    )
    with pytest.raises(ValueError) as exc:
        check_same_settings(
            path, {"model": "b", "budget": 60, "batch_size": 1}, what="out/records.jsonl", advice="use another --output"
        )
    assert str(exc.value) == (
        "out/records.jsonl holds records made with other settings "
        "(batch_size: 8 -> 1, budget: 100 -> 60, model: 'a' -> 'b'); use another --output"
    )


def test_save_settings_can_keep_what_a_rerun_does_not_cover(tmp_path):
    path = tmp_path / "settings.json"
    save_settings(path, {"model": "a", "budget[20:43]": 100})
    save_settings(path, {"model": "a", "budget[50:10]": 100}, keep_saved=True)
    assert json.loads(path.read_text()) == {"model": "a", "budget[20:43]": 100, "budget[50:10]": 100}
    path.write_text("{torn")
    with pytest.raises(ValueError, match=r"settings\.json: unreadable settings file"):
        check_same_settings(path, {"model": "a"})


# ---------------------------------------------------------------------------------- benchmark scripts
def _script(name: str):
    """Import an eval/ script as a module (eval/ is no package)."""
    return load_script(f"eval/{name}.py")


@pytest.fixture(scope="module")
def tiny_collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("coll")
    docs = {f"d{i}": f"passage {i} about {['rope', 'bees', 'rivers'][i % 3]}" for i in range(4)}
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in docs.items()))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "bees"}) + "\n")
    (root / "qrels.txt").write_text("q1 0 d1 1\n")
    (root / "run.bm25.trec").write_text("".join(f"q1 Q0 d{i} {i + 1} {10 - i} bm25\n" for i in range(4)))
    return str(root)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    from support import make_tiny_llama

    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_llama(len(tokenizer), layers=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_bench_strategies_refuses_another_model_or_budget(tmp_path, tiny_collection, tiny_dir, capsys):
    bench = _script("bench_strategies")
    out = tmp_path / "s.json"
    base = [
        "--collection",
        tiny_collection,
        "--groups",
        "3:1",
        "--max_passage_tokens",
        "20",
        "--variants",
        "full",
        "--output",
        str(out),
    ]
    first = bench.main(base + ["--model", tiny_dir])
    assert [r["queries"] for r in first["rows"]] == [1]
    with pytest.raises(
        ValueError,
        match=r"s\.records\.jsonl holds records made with other settings \(model: "
        r"'.*tiny.*' -> 'other/model'\)",
    ):
        bench.main(base + ["--model", "other/model"])  # refused before any model loads
    with pytest.raises(ValueError, match=r"max_passage_tokens\[3:1\]: 20 -> 30"):
        bench.main([a if a != "20" else "30" for a in base] + ["--model", tiny_dir])
    bench.main(base + ["--model", tiny_dir, "--schedules", "s=fast"])  # a new variant: allowed
    with pytest.raises(ValueError, match=r"variant\[single_pass\+s\]: \{.*\} -> \{.*\}"):  # same name, other schedule
        bench.main(base + ["--model", tiny_dir, "--schedules", "s=default"])
    records = recover_records(out.with_suffix(".records.jsonl"))
    assert sorted((r["group"], r["variant"]) for r in records) == [("3:1", "full"), ("3:1", "single_pass+s")]
    # the same settings resume: nothing is ranked again
    assert bench.main(base + ["--model", tiny_dir])["rows"][0]["queries"] == 1
    assert len(recover_records(out.with_suffix(".records.jsonl"))) == len(records)
    capsys.readouterr()


def test_ablation_refuses_a_name_pointing_at_another_model(tmp_path, tiny_collection, tiny_dir, capsys):
    ablation = _script("ablation_single_pass")
    out = tmp_path / "a.json"
    base = [
        "--collection",
        tiny_collection,
        "--groups",
        "3",
        "--budgets",
        "20",
        "--variants",
        "generate",
        "--schedules",
        "--batch_size",
        "2",
        "--output",
        str(out),
    ]
    first = ablation.main(base + ["--models", f"lm={tiny_dir}"])
    assert [r["queries"] for r in first["rows"]] == [1]
    with pytest.raises(ValueError, match=r"model\[lm\]: '.*tiny.*' -> 'elsewhere'"):
        ablation.main(base + ["--models", "lm=elsewhere"])
    with pytest.raises(ValueError, match=r"dtype: None -> 'bfloat16'"):
        ablation.main(base + ["--models", f"lm={tiny_dir}", "--dtype", "bfloat16"])
    # summarising ranks nothing and is never refused
    assert ablation.main(base + ["--models", "lm=elsewhere", "--summarize_only"])["rows"][0]["queries"] == 1
    assert len(recover_records(out.with_suffix(".records.jsonl"))) == 1
    capsys.readouterr()


def test_eval_refuses_through_the_shared_check(tmp_path, monkeypatch):
    from rerank import evaluation
    from rerank.evaluation import EvalConfig

    save_settings(tmp_path / "eval_config.json", {"model": "a", "top_k": 100, "batch_size": 1})
    evaluation._check_same_ranking_setup(tmp_path, EvalConfig(collection="c", model="a", batch_size=4))
    with pytest.raises(ValueError, match=r"model: 'a' -> 'b'\); use another --output_dir"):
        evaluation._check_same_ranking_setup(tmp_path, EvalConfig(collection="c", model="b"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
