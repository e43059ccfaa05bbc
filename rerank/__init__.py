"""LazyRank: long-context LLM listwise reranking (full ranking, complete labels, pruned prefill)."""

from .config import PruningConfig, RerankerConfig
from .ranking import Window, WindowRanker, WindowRanking
from .reranker import Reranker
from .results import RankingResult, RankingStats

__all__ = ["PruningConfig", "RankingResult", "RankingStats", "Reranker", "RerankerConfig", "Window",
           "WindowRanker", "WindowRanking"]
__version__ = "0.1.0"
