"""``LabelConfig``: the options of ``rerank labels``."""

from __future__ import annotations

from dataclasses import dataclass, field

from rerank.ranking import SlidingPlan

TEXT_MODES = ("inline", "none")


@dataclass
class LabelConfig:
    """Options of ``rerank labels``."""

    input: str = field(
        metadata={
            "help": "Collection folder (corpus.jsonl, queries.jsonl, qrels, run.*.trec) or a "
            "JSONL of {qid, query, candidates: [{docid, text}]} in first-stage order."
        }
    )
    output: str = field(metadata={"help": "Label JSONL to append to (resumed if it exists)."})
    teacher: str = field(metadata={"help": "qrels | embed[:PATH] | openai:MODEL | llm | a local model path or hub id."})
    run: str | None = field(
        default=None,
        metadata={
            "help": "First-stage TREC run for a collection folder; default run.bm25.trec or run.given.trec there."
        },
    )
    qrels: str | None = field(
        default=None, metadata={"help": "Qrels file for --teacher qrels with a JSONL input (a folder brings its own)."}
    )
    depth: int = field(default=100, metadata={"help": "First-stage candidates labelled per query."})
    window_size: int = field(default=20, metadata={"help": "Passages per teacher window (w)."})
    stride: int = field(default=10, metadata={"help": "Window step; also the ranks frozen after each pass (s <= w/2)."})
    max_passes: int | None = field(
        default=None,
        metadata={"help": "Stop after this many passes (the rest keeps the last pass's order); None = until complete."},
    )
    batch_size: int = field(default=8, metadata={"help": "Queries whose windows go to the teacher together."})
    max_retries: int = field(
        default=2, metadata={"help": "Retries of a failed teacher window before the query is recorded as failed."}
    )
    retry_wait: float = field(default=1.0, metadata={"help": "Seconds before the first retry (doubles each time)."})
    texts: str = field(
        default="inline",
        metadata={"help": "'inline': store passage texts in each line; 'none': ids only (train with --corpus_file)."},
    )
    max_queries: int | None = field(default=None, metadata={"help": "Label at most this many queries (input order)."})
    errors_file: str | None = field(default=None, metadata={"help": "Where failures go; default OUTPUT.errors.jsonl."})
    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible endpoint for openai:MODEL."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the API key."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds per API request."})
    prompt: str = field(
        default="lazyrank",
        metadata={
            "help": (
                "Prompt preset of a local LLM teacher (rerank.prompting.presets.PRESETS), e.g. rank_zephyr for a "
                "RankZephyr checkpoint."
            )
        },
    )
    device: str | None = field(default=None, metadata={"help": "Device of a local teacher model."})
    dtype: str | None = field(default=None, metadata={"help": "dtype of a local teacher LLM."})
    max_passage_tokens: int | None = field(
        default=100, metadata={"help": "Per-passage token budget of a local LLM teacher."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self):
        from rerank.prompting.presets import get_preset

        get_preset(self.prompt)  # an unknown preset fails before any teacher loads
        for name in ("depth", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.plan()  # window_size / stride / max_passes are checked where the scheduler defines them
        if self.max_retries < 0 or self.retry_wait < 0:
            raise ValueError("max_retries and retry_wait must be >= 0")
        if self.texts not in TEXT_MODES:
            raise ValueError(f"texts must be one of {TEXT_MODES}, got {self.texts!r}")
        if self.errors_file is None:
            self.errors_file = self.output + ".errors.jsonl"

    def plan(self) -> SlidingPlan:
        """The window schedule of complete labels: sliding passes that freeze the top ``stride``."""
        return SlidingPlan(window_size=self.window_size, stride=self.stride, passes=self.max_passes, freeze=True)
