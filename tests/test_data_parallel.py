"""Data-parallel `rerank eval` / `rerank labels` under `accelerate launch`: N processes write what one does.

The multiproc tests launch 2 real CPU processes (gloo) with configs/accelerate/cpu_2proc.yaml over a
tiny random Llama saved to a folder, and compare with a one-process run of the same command.
Equality is byte for byte where no timing is recorded (run.trec); rankings.jsonl and label lines
carry wall-clock seconds per query, so there every field but those timings must be equal (same
lines, same order, same rankings/labels, same token and call counts).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import make_tiny_llama

from rerank.distributed import DataParallel, detect, existing_shards, merge_shards, own_log, shard_path, without_timings
from rerank.evaluation import EvalConfig, evaluate
from rerank.labels import Candidates, LabelConfig, iter_complete_labels, label_order, run_labelling
from rerank.ranking import WindowRanking

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
TOPICS = ["rope", "bees", "rivers", "engines", "the moon", "bread", "chess", "volcanoes"]


# ---------------------------------------------------------------------------------------------- fixtures
def write_collection(root: Path, queries: int = 7) -> Path:
    """Queries with 3..11 candidates each: label passes (and so the write order) differ per query."""
    root.mkdir()
    lists = {f"q{q}": [f"d{q}-{i}" for i in range(3 + (q * 5) % 9)] for q in range(queries)}
    corpus = {
        d: f"{d} about {TOPICS[i % 8]} and {TOPICS[(i * 3) % 8]}" for docs in lists.values() for i, d in enumerate(docs)
    }
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in corpus.items()))
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": f"what about {TOPICS[int(q[1:]) % 8]}"}) + "\n" for q in lists)
    )
    (root / "qrels.txt").write_text("".join(f"{q} 0 {docs[int(q[1:]) % len(docs)]} 1\n" for q, docs in lists.items()))
    (root / "run.bm25.trec").write_text(
        "".join(f"{q} Q0 {d} {r + 1} {100 - r} bm25\n" for q, docs in lists.items() for r, d in enumerate(docs))
    )
    return root


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> str:
    return str(write_collection(tmp_path_factory.mktemp("dp") / "coll"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer) -> str:
    """A 2-layer random Llama over the real tokenizer, saved like a hub model folder."""
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_llama(len(tokenizer), layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def eval_args(collection: str, model: str, out: Path) -> list[str]:
    return [
        "eval",
        "--collection",
        collection,
        "--model",
        model,
        "--depth",
        "8",
        "--scoring",
        "single_pass",
        "--max_passage_tokens",
        "16",
        "--output_dir",
        str(out),
    ]


def eval_config(collection: str, model: str, out: Path) -> EvalConfig:
    return EvalConfig(
        collection=collection, model=model, depth=8, scoring="single_pass", max_passage_tokens=16, output_dir=str(out)
    )


def label_config(collection: str, teacher: str, out: Path) -> LabelConfig:
    # window 4 / stride 2 / batch 3: several passes, and queries of a batch finish in another order
    return LabelConfig(
        input=collection,
        teacher=teacher,
        output=str(out),
        depth=8,
        window_size=4,
        stride=2,
        batch_size=3,
        max_passage_tokens=16,
        progress=False,
    )


def label_args(cfg: LabelConfig) -> list[str]:
    return [
        "labels",
        "--input",
        cfg.input,
        "--teacher",
        cfg.teacher,
        "--output",
        cfg.output,
        "--depth",
        str(cfg.depth),
        "--window_size",
        str(cfg.window_size),
        "--stride",
        str(cfg.stride),
        "--batch_size",
        str(cfg.batch_size),
        "--max_passage_tokens",
        str(cfg.max_passage_tokens),
        "--progress",
        "false",
    ]


# A launcher target that stops one process hard (os._exit: no cleanup, like a crash) after it has
# appended k records, so "killed midway" is deterministic, not a race against a timer.
CRASH_WRAPPER = textwrap.dedent("""
    import os, sys
    import rerank.evaluation, rerank.labels.job
    from rerank.cli.commands import main

    def crashing(module):
        append, done = module.append_record, []
        def wrapped(fh, record, **kw):
            append(fh, record, **kw)
            done.append(record.get("qid"))
            if os.environ["RANK"] == os.environ["CRASH_RANK"] and len(done) >= int(os.environ["CRASH_AFTER"]):
                os._exit(3)
        module.append_record = wrapped

    crashing(rerank.evaluation)
    crashing(rerank.labels.job)
    sys.exit(main(sys.argv[1:]))
""")


def launch(
    args: list[str], tmp_path: Path, *, crash_rank: int | None = None, crash_after: int = 1, processes: int = 2
) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m rerank.cli ARGS` (or the crash wrapper)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("ACCELERATE_USE_CPU", None)
    target = ["-m", "rerank.cli"]
    if crash_rank is not None:
        wrapper = tmp_path / "crash_wrapper.py"
        wrapper.write_text(CRASH_WRAPPER)
        target = [str(wrapper)]
        env.update(CRASH_RANK=str(crash_rank), CRASH_AFTER=str(crash_after), PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CPU_CONFIG),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(29500 + random.randrange(1000)),
        *target,
        *args,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    (tmp_path / f"launch-{len(list(tmp_path.glob('launch-*')))}.log").write_text(proc.stdout + proc.stderr)
    return proc


def log_tail(proc: subprocess.CompletedProcess) -> str:
    return "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if "Warning" not in line)[-3000:]


def same_records(a: Path, b: Path) -> None:
    lines_a, lines_b = a.read_text().splitlines(), b.read_text().splitlines()
    assert [json.loads(line)["qid"] for line in lines_a] == [json.loads(line)["qid"] for line in lines_b]
    assert [without_timings(line) for line in lines_a] == [without_timings(line) for line in lines_b]


def same_eval_output(one: Path, many: Path, processes: int) -> None:
    assert (one / "run.trec").read_bytes() == (many / "run.trec").read_bytes()
    same_records(one / "rankings.jsonl", many / "rankings.jsonl")
    m1, mn = (json.loads((d / "metrics.json").read_text()) for d in (one, many))
    assert (m1["processes"], mn["processes"]) == (1, processes)
    for key in (
        "ndcg@10",
        "rr@10",
        "recall@100",
        "queries",
        "prompt_tokens_per_query",
        "llm_calls_per_query",
        "computed_fraction",
        "fallbacks",
        "scoring",
    ):
        assert m1[key] == mn[key], key
    assert existing_shards(many / "rankings.jsonl") == []


# ---------------------------------------------------------------------------------------------- no launch
def test_shard_names_and_discovery(tmp_path):
    merged = tmp_path / "rankings.jsonl"
    assert shard_path(merged, 1, 2).name == "rankings.shard-1-of-2.jsonl"
    assert shard_path(tmp_path / "x.embed.jsonl", 0, 3).name == "x.embed.shard-0-of-3.jsonl"
    with pytest.raises(ValueError, match="rank must be in"):
        shard_path(merged, 2, 2)
    for name in (
        "rankings.shard-1-of-2.jsonl",
        "rankings.shard-0-of-3.jsonl",
        "rankings.shard-0-of-2.jsonl",
        "other.shard-0-of-2.jsonl",
        "rankings.shard-x-of-2.jsonl",
        "rankings.jsonl.errors.jsonl",
    ):
        (tmp_path / name).write_text("")
    assert [p.name for p in existing_shards(merged)] == [
        "rankings.shard-0-of-2.jsonl",
        "rankings.shard-1-of-2.jsonl",
        "rankings.shard-0-of-3.jsonl",
    ]
    # one plain process writes the merged file itself (as always); with shards left over, a shard
    assert own_log(merged, DataParallel(), shards_present=False) == merged
    assert own_log(merged, DataParallel(), shards_present=True).name == "rankings.shard-0-of-1.jsonl"
    assert own_log(merged, DataParallel(rank=1, world=2), shards_present=False).name == "rankings.shard-1-of-2.jsonl"
    assert DataParallel(rank=1, world=3).share(list("abcdefg")) == ["b", "e"]


def test_merge_appends_missing_records_in_order_byte_for_byte(tmp_path):
    merged = tmp_path / "labels.jsonl"
    rec = {f"q{i}": {"qid": f"q{i}", "query": f"café {i}", "x": [i, 0.1 * i]} for i in range(6)}
    line = {q: json.dumps(r, ensure_ascii=False) + "\n" for q, r in rec.items()}
    merged.write_text(line["q0"], encoding="utf-8")  # merged already (an interrupted merge)
    shard_path(merged, 0, 2).write_text(line["q0"] + line["q4"] + line["q2"], encoding="utf-8")
    shard_path(merged, 1, 2).write_text(line["q5"] + line["q1"] + '{"qid": "q3", "que', encoding="utf-8")  # torn
    appended = merge_shards(merged, ["q0", "q1", "q2", "q3", "q4"], key=lambda r: r["qid"], ensure_ascii=False)
    assert appended == 4
    # q3 was torn (not done), q5 is not in the order (an earlier, larger run): kept, after the ordered ones
    assert merged.read_text(encoding="utf-8") == "".join(line[q] for q in ("q0", "q1", "q2", "q4", "q5"))
    assert existing_shards(merged) == []
    assert merge_shards(merged, ["q0"], key=lambda r: r["qid"]) == 0


class LengthTeacher:
    """Deterministic: prefers longer passage texts."""

    def rank_windows(self, windows):
        return [
            WindowRanking(
                order=sorted(range(len(w.passages)), key=lambda i: (-len(w.passages[i]), i)), ranked=len(w.passages)
            )
            for w in windows
        ]


def test_label_order_is_the_order_one_process_writes(tmp_path):
    items = [
        Candidates(f"q{k}", "q", [f"d{i}" for i in range(n)], ["x" * ((i * 7) % 5) for i in range(n)])
        for k, n in enumerate([30, 3, 12, 25, 1, 9, 14])
    ]
    cfg = LabelConfig(input="unused", output="unused", teacher="x", window_size=6, stride=3, batch_size=3)
    written = [o.item.qid for o in iter_complete_labels(LengthTeacher(), items, 6, 3, None, 3)]
    assert written != [it.qid for it in items]  # a batch's short lists finish (and are written) first
    assert label_order(items, cfg) == written


def test_one_process_resumes_shards_of_another_process_count(tmp_path):
    """Shards of a killed 3-process run (one with a torn tail) + a plain process = one plain run, byte for byte."""
    coll = str(write_collection(tmp_path / "c"))
    ref = tmp_path / "ref"
    evaluate(EvalConfig(collection=coll, strategy="none", output_dir=str(ref)), progress=False)
    lines = (ref / "rankings.jsonl").read_text().splitlines(keepends=True)  # strategy none: no timings
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval_config.json").write_text((ref / "eval_config.json").read_text())
    shard_path(out / "rankings.jsonl", 2, 3).write_text(lines[2] + lines[5])
    shard_path(out / "rankings.jsonl", 0, 3).write_text(lines[0] + lines[3][:15])
    metrics = evaluate(EvalConfig(collection=coll, strategy="none", output_dir=str(out)), progress=False)
    assert (out / "rankings.jsonl").read_text() == "".join(lines)
    assert (out / "run.trec").read_bytes() == (ref / "run.trec").read_bytes()
    assert metrics["processes"] == 1 and existing_shards(out / "rankings.jsonl") == []
    # resuming the shards under another ranking setup is refused like resuming rankings.jsonl
    shard_path(out / "rankings.jsonl", 0, 2).write_text(lines[0])
    with pytest.raises(ValueError, match="depth: 100 -> 5"):
        evaluate(EvalConfig(collection=coll, strategy="none", output_dir=str(out), depth=5), progress=False)


def test_plain_process_needs_no_launcher(monkeypatch, caplog):
    for var in ("WORLD_SIZE", "ACCELERATE_USE_CPU", "MASTER_ADDR"):
        monkeypatch.delenv(var, raising=False)
    dp = detect()
    assert (dp.rank, dp.world, dp.device, dp.state) == (0, 1, None, None)
    assert dp.broadcast({"a"}) == {"a"} and dp.gather(3) == [3]
    # `accelerate launch --cpu --num_processes 2` runs ONE process (accelerate's simple launcher): say so
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with caplog.at_level("WARNING", logger="rerank.distributed"):
        assert detect().world == 1
    assert "cpu_2proc.yaml" in caplog.text


# ---------------------------------------------------------------------------------------------- real launches
@pytest.mark.multiproc
def test_two_processes_evaluate_like_one(tmp_path, collection, tiny_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    evaluate(eval_config(collection, tiny_dir, one), progress=False)
    proc = launch(eval_args(collection, tiny_dir, two), tmp_path)
    assert proc.returncode == 0, log_tail(proc)
    log = proc.stdout + proc.stderr
    assert "process 0 of 2: 4 of the 7 remaining" in log and "process 1 of 2: 3 of the 7 remaining" in log
    assert "terminate called" not in log
    same_eval_output(one, two, processes=2)

    class Unused:
        config = None

        def rerank_batch(self, *args, **kwargs):
            raise AssertionError("a merged rankings.jsonl with every query means nothing is left to do")

    before = (two / "rankings.jsonl").read_bytes()
    evaluate(eval_config(collection, tiny_dir, two), reranker=Unused(), progress=False)
    assert (two / "rankings.jsonl").read_bytes() == before


@pytest.mark.multiproc
def test_two_processes_label_like_one(tmp_path, collection, tiny_dir):
    one, two = (
        label_config(collection, tiny_dir, tmp_path / "one.jsonl"),
        label_config(collection, tiny_dir, tmp_path / "two.jsonl"),
    )
    summary_one = run_labelling(one)
    proc = launch(label_args(two), tmp_path)
    assert proc.returncode == 0, log_tail(proc)
    summary_two = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    same_records(Path(one.output), Path(two.output))
    qids = [json.loads(line)["qid"] for line in Path(one.output).read_text().splitlines()]
    assert qids != sorted(qids, key=lambda q: int(q[1:]))  # the write order is not input order: merge kept it
    for key in ("queries", "labelled", "failed", "calls", "prompt_tokens", "generated_tokens"):
        assert summary_one[key] == summary_two[key], key
    assert (summary_one["processes"], summary_two["processes"]) == (1, 2)
    assert existing_shards(two.output) == [] and Path(two.errors_file).is_file()


@pytest.mark.multiproc
def test_killed_two_process_eval_resumes_to_the_same_output(tmp_path, collection, tiny_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    evaluate(eval_config(collection, tiny_dir, one), progress=False)
    crashed = launch(eval_args(collection, tiny_dir, two), tmp_path, crash_rank=1, crash_after=1)
    assert crashed.returncode != 0
    assert not (two / "rankings.jsonl").exists()  # killed before the merge
    assert len(shard_path(two / "rankings.jsonl", 1, 2).read_text().splitlines()) == 1
    with open(shard_path(two / "rankings.jsonl", 0, 2), "a") as fh:
        fh.write('{"qid": "q6", "rank')  # and a torn line, as a kill during a write leaves
    done = sum(
        1 for p in existing_shards(two / "rankings.jsonl") for line in p.read_text().splitlines() if line.endswith("}")
    )  # complete records only
    proc = launch(eval_args(collection, tiny_dir, two), tmp_path)
    assert proc.returncode == 0, log_tail(proc)
    assert f"of the {7 - done} remaining" in proc.stdout + proc.stderr  # finished queries were not redone
    same_eval_output(one, two, processes=2)


@pytest.mark.multiproc
def test_killed_two_process_labels_resume_with_one_process(tmp_path, collection, tiny_dir):
    one, two = (
        label_config(collection, tiny_dir, tmp_path / "one.jsonl"),
        label_config(collection, tiny_dir, tmp_path / "two.jsonl"),
    )
    run_labelling(one)
    crashed = launch(label_args(two), tmp_path, crash_rank=0, crash_after=2)
    assert crashed.returncode != 0 and not Path(two.output).exists()
    assert len(shard_path(two.output, 0, 2).read_text().splitlines()) == 2
    summary = run_labelling(two)  # another process count: the shards' queries count as done
    assert summary["skipped_done"] >= 2 and summary["processes"] == 1
    same_records(Path(one.output), Path(two.output))
    assert existing_shards(two.output) == []
