"""Inference engine: prefill/step sessions over token ids and constrained permutation decoding."""

from rerank.engine.generate import DecodeOutput, rank_prompts
from rerank.engine.pruning import PrunedSession, UnsupportedModelError, check_supported
from rerank.engine.session import DenseSession, PrefillInfo, Session
from rerank.engine.single_pass import IdentifierScores, score_identifiers

__all__ = [
    "DecodeOutput",
    "DenseSession",
    "IdentifierScores",
    "PrefillInfo",
    "PrunedSession",
    "Session",
    "UnsupportedModelError",
    "check_supported",
    "rank_prompts",
    "score_identifiers",
]
