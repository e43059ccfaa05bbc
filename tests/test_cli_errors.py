"""A user's mistake on the command line: one line on stderr naming the file (and line), a non-zero exit;
``--debug`` or ``LAZYRANK_DEBUG=1`` shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rerank import cli

REPO = Path(__file__).resolve().parent.parent


def _collection(root: Path, corpus: str, queries: str = '{"_id": "q1", "text": "tides"}\n') -> Path:
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text(corpus)
    (root / "queries.jsonl").write_text(queries)
    return root


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_empty_corpus_names_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LAZYRANK_DEBUG", raising=False)
    coll = _collection(tmp_path / "empty", "")
    assert cli.main(["retrieve", "--collection", str(coll), "--output", str(tmp_path / "run.trec")]) == 1
    line = _error_line(capsys)
    assert line.startswith("rerank retrieve: error: ") and f"{coll / 'corpus.jsonl'} holds no passage" in line


def test_bad_line_names_file_line_and_position(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LAZYRANK_DEBUG", raising=False)
    coll = _collection(tmp_path / "bad", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"\n')
    assert cli.main(["retrieve", "--collection", str(coll), "--output", str(tmp_path / "run.trec")]) == 1
    line = _error_line(capsys)
    # the record is 26 characters: the missing brace is noticed at the line end (character 27)
    assert f"{coll / 'corpus.jsonl'}:2: invalid JSON at character 27 (Expecting ',' delimiter)" in line


def test_missing_inputs_are_named(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LAZYRANK_DEBUG", raising=False)
    assert cli.main(["retrieve", "--collection", str(tmp_path / "nowhere"), "--output", "x.trec"]) == 1
    assert f"collection folder {tmp_path / 'nowhere'} does not exist" in _error_line(capsys)
    assert cli.main(["retrieve", "--collection", "no-such-dataset", "--output", "x.trec"]) == 1
    assert "'no-such-dataset' is neither a collection folder nor an ir_datasets id" in _error_line(capsys)
    coll = _collection(tmp_path / "ok", '{"_id": "d1", "text": "tides and moon"}\n')
    assert (
        cli.main(
            [
                "retrieve",
                "--collection",
                str(coll),
                "--queries",
                str(tmp_path / "q.jsonl"),
                "--output",
                str(tmp_path / "run.trec"),
            ]
        )
        == 1
    )
    assert f"No such file or directory: '{tmp_path / 'q.jsonl'}'" in _error_line(capsys)


def test_debug_flag_and_variable_show_the_traceback(tmp_path, monkeypatch):
    monkeypatch.delenv("LAZYRANK_DEBUG", raising=False)
    coll = _collection(tmp_path / "empty", "")
    args = ["retrieve", "--collection", str(coll), "--output", str(tmp_path / "run.trec")]
    with pytest.raises(ValueError, match="holds no passage"):
        cli.main(["--debug", *args])
    monkeypatch.setenv("LAZYRANK_DEBUG", "1")
    with pytest.raises(ValueError, match="holds no passage"):
        cli.main(args)


def test_the_command_exits_non_zero_with_one_line(tmp_path):
    coll = _collection(tmp_path / "empty", "")
    env = {k: v for k, v in os.environ.items() if k != "LAZYRANK_DEBUG"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rerank.cli",
            "retrieve",
            "--collection",
            str(coll),
            "--output",
            str(tmp_path / "run.trec"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"rerank retrieve: error: {coll / 'corpus.jsonl'} holds no passage: nothing to index "
        "(--debug or LAZYRANK_DEBUG=1 for the traceback)"
    ]
