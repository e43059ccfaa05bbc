"""PyTerrier adapter: :class:`LazyRankReranker`, a ``pt.Transformer`` that reranks a results frame.

    import pyterrier as pt
    from rerank import Reranker
    from rerank.integrations.pyterrier import LazyRankReranker

    lazyrank = LazyRankReranker(Reranker.from_pretrained())          # or LazyRankReranker("http://127.0.0.1:8000")
    pipeline = bm25 >> pt.text.get_text(dataset, "text") >> lazyrank
    pt.Experiment([bm25, pipeline], topics, qrels, ["nDCG@10"], baseline=0, correction="holm")

Needs ``pyterrier``: ``pip install 'lazyrank[pyterrier]'``. No Java: nothing here starts ``pt.java``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    import pandas as pd
    import pyterrier as pt
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the PyTerrier adapter needs pyterrier: pip install 'lazyrank[pyterrier]'") from exc

from rerank.integrations._backend import RankingBackend

__all__ = ["LazyRankReranker"]

REQUIRED = ("qid", "query", "docno")
# Settings worth naming in a results table; the model/device/dtype record is named apart.
_NOT_SETTINGS = ("model", "device", "dtype")


class LazyRankReranker(pt.Transformer):
    """Rerank each query's candidates of a PyTerrier results frame with LazyRank.

    Input: a results frame with ``qid``, ``query``, ``docno`` and the passage text (``text_field``,
    default ``"text"``); ``rank`` or ``score`` (the first stage's) give the order the reranker reads
    the candidates in, else the frame's order. Output: the same rows and columns, each query's rows
    in the reranked order, ``score`` = ``n - r`` for the ``r``-th of ``n`` (0-based; a listwise ranking
    is an order, and strictly decreasing scores keep ties from reordering it in evaluation) and
    ``rank`` from ``pt.model.add_ranks``. All queries of the frame go to one ``rerank_batch`` call
    (in process), so LLM calls are batched across queries; a server URL gets one request per query.

    Example:
        >>> reranker = LazyRankReranker(Reranker.from_pretrained())        # doctest: +SKIP
        >>> (bm25 >> reranker).search("how do bees keep warm")             # doctest: +SKIP
    """

    def __init__(
        self,
        reranker: Any,
        *,
        text_field: str = "text",
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 120.0,
    ):
        self.reranker = reranker
        self.text_field = text_field
        self._backend = RankingBackend(reranker, api_key=api_key, model=model, timeout=timeout)

    def __repr__(self) -> str:
        # pt.Experiment names systems by str(): say which model and which settings ranked.
        if self._backend.reranker is None:
            return f"LazyRank({self.reranker!r})"
        config = self._backend.reranker.config
        defaults = type(config)()
        changed = [
            f"{name}={value!r}"
            for name, value in vars(config).items()
            if name not in _NOT_SETTINGS and value != getattr(defaults, name)
        ]
        # config.model records what from_pretrained loaded; None is the shipped default.
        return f"LazyRank({', '.join([config.model or 'default', *changed])})"

    def _check_columns(self, columns: Sequence[str]) -> None:
        required = [*REQUIRED, self.text_field]
        missing = [c for c in required if c not in columns]
        if not missing:
            return
        hint = (
            f" LazyRank reranks passage text: add the {self.text_field!r} column before it, e.g. "
            f"`retriever >> pt.text.get_text(index_or_dataset, {self.text_field!r}) >> reranker` "
            f"(or pass text_field=)."
            if self.text_field in missing
            else ""
        )
        try:
            pt.validate.columns(list(columns), includes=required, context=self)
        except pt.validate.InputValidationError as err:
            # PyTerrier's own error type, so pt.Experiment's validation reports the pipeline as invalid.
            err.args = (
                f"LazyRankReranker needs the column(s) {missing} in a results frame "
                f"(qid, query, docno, {self.text_field}); got {list(columns)}.{hint}",
            )
            raise

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        """The output columns for ``input_columns`` (``pt.inspect``, without running the model)."""
        self._check_columns(input_columns)
        return [*input_columns, *(c for c in ("score", "rank") if c not in input_columns)]

    @staticmethod
    def _first_stage_order(group: pd.DataFrame) -> pd.DataFrame:
        """A query's rows in the order the first stage ranked them (the listwise prompt reads them so)."""
        if "rank" in group.columns:
            return group.sort_values("rank", kind="stable")
        if "score" in group.columns:
            return group.sort_values("score", ascending=False, kind="stable")
        return group

    def _check_values(self, inp: pd.DataFrame) -> None:
        for column in ("query", self.text_field):
            bad = inp[~inp[column].map(lambda v: isinstance(v, str))]
            if len(bad):
                row = bad.iloc[0]
                raise ValueError(
                    f"column {column!r} must hold str; qid {row['qid']!r} docno {row['docno']!r} has {row[column]!r}"
                )

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        """Rerank ``inp`` per query (see the class docstring)."""
        self._check_columns(list(inp.columns))
        if len(inp) == 0:
            return inp.assign(score=pd.Series(dtype="float64"), rank=pd.Series(dtype="int64"))
        self._check_values(inp)
        groups = [self._first_stage_order(g) for _, g in inp.groupby("qid", sort=False)]
        queries = [g["query"].iloc[0] for g in groups]
        ranked = self._backend.rank_many(queries, [g[self.text_field].tolist() for g in groups])
        frames = []
        for group, order in zip(groups, ranked):
            n = len(order)
            out = group.iloc[[index for index, _ in order]].copy()
            out["score"] = [float(n - r) for r in range(n)]
            frames.append(out)
        result = pd.concat(frames, ignore_index=True)
        return pt.model.add_ranks(result)
