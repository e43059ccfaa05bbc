"""Inference engine: prefill/step sessions over token ids and constrained permutation decoding."""

from .generate import DecodeOutput, rank_prompts
from .session import DenseSession, PrefillInfo, Session

__all__ = ["DecodeOutput", "DenseSession", "PrefillInfo", "Session", "rank_prompts"]
