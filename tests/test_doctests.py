"""The runnable examples in docstrings stay true."""

import doctest

import pytest
from support import load_script

import rerank.calibration
import rerank.config
import rerank.data.script_support
import rerank.engine.decoding
import rerank.evaluation
import rerank.fusion
import rerank.labels.list_teacher
import rerank.labels.training_lists
import rerank.long_lists
import rerank.ranking
import rerank.training.losses.identifier_ranking


@pytest.mark.parametrize(
    "module",
    [
        rerank.engine.decoding,
        rerank.fusion,
        rerank.ranking,
        rerank.config,
        rerank.training.losses.identifier_ranking,
        rerank.long_lists,
        rerank.calibration,
        rerank.evaluation,
        rerank.data.script_support,
        rerank.labels.list_teacher,
        rerank.labels.training_lists,
        load_script("eval/calibration.py"),
        load_script("eval/bench_depth_speed.py"),
        load_script("eval/chunk_precision.py"),
        load_script("eval/depth_methods.py"),
        load_script("eval/leader_recall.py"),
        load_script("eval/plot_depth.py"),
        load_script("scripts/fit_calibration.py"),
    ],
    ids=lambda module: module.__name__,
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
