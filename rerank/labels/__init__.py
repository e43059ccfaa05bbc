"""Complete listwise labels (docs/design.md section 3): a full teacher permutation of all N candidates.

One module per job:

* :mod:`.config`: ``LabelConfig``, the options of ``rerank labels``;
* :mod:`.candidates`: what gets labelled (``Candidates``, ``load_candidates``);
* :mod:`.complete`: the algorithm, multi-pass sliding windows that freeze the top after each pass,
  on the scheduler inference uses (:func:`rerank.ranking.iter_sliding`), with retries and costs;
* :mod:`.records`: the label file format (``LabelRecord``, ``read_labels``), what training reads;
* :mod:`.job`: the resumable, data-parallel ``rerank labels`` job and its command line.

Command::

    rerank labels --input ../shared/data/wikiqa-train --teacher embed --output labels/wikiqa.embed.jsonl

The job appends one JSON line per finished query (fsynced), so an interrupted run resumes by
skipping the qids already in the output; a torn last line is cut off. Teacher failures are retried
``max_retries`` times, then written to an errors file and the query stays unlabelled (a later run
retries it): never padded into a wrong label.
"""

from rerank.labels.candidates import Candidates, load_candidates
from rerank.labels.complete import (
    LabelOutcome,
    LabelStats,
    RetryingTeacher,
    WindowFailed,
    iter_complete_labels,
    label_order,
)
from rerank.labels.config import TEXT_MODES, LabelConfig
from rerank.labels.job import main, run_labelling
from rerank.labels.records import LabelRecord, label_record, read_labels, scan_done

__all__ = [
    "Candidates",
    "LabelConfig",
    "LabelOutcome",
    "LabelRecord",
    "LabelStats",
    "RetryingTeacher",
    "TEXT_MODES",
    "WindowFailed",
    "iter_complete_labels",
    "label_order",
    "label_record",
    "load_candidates",
    "main",
    "read_labels",
    "run_labelling",
    "scan_done",
]
