"""Inference engine: prefill/step sessions over token ids and constrained permutation decoding."""

from .generate import DecodeOutput, rank_prompts
from .identifiers import IdentifierScores, score_identifiers
from .pruning import PrunedSession, UnsupportedModelError, check_supported
from .session import DenseSession, PrefillInfo, Session

__all__ = ["DecodeOutput", "DenseSession", "IdentifierScores", "PrefillInfo", "PrunedSession", "Session", "UnsupportedModelError",
           "check_supported", "rank_prompts", "score_identifiers"]
