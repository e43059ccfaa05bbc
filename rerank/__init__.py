"""LazyRank: long-context LLM listwise reranking (full ranking, complete labels, pruned prefill)."""

from rerank.config import PruningConfig, RerankerConfig
from rerank.ranking import Window, WindowRanker, WindowRanking
from rerank.reranker import Reranker
from rerank.results import RankingResult, RankingStats

__all__ = [
    "PruningConfig",
    "RankingResult",
    "RankingStats",
    "Reranker",
    "RerankerConfig",
    "Window",
    "WindowRanker",
    "WindowRanking",
]
__version__ = "0.1.0"
