"""Shared fixtures: the default model's real tokenizer and tiny randomly initialised models."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Haystack decides at import whether to send usage events; tests run offline.
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

from support import make_tiny_llama  # noqa: E402  (after the environment above)


@pytest.fixture(scope="session")
def default_model_dir():
    from rerank.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def tokenizer(default_model_dir):
    """The default model's real tokenizer (ChatML template, digits split one per token)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """A 4-layer randomly initialised Llama (GQA 4/2 heads) over the real tokenizer's vocabulary."""
    return make_tiny_llama(len(tokenizer))


@pytest.fixture(scope="session")
def tiny_reranker(tiny_model, tokenizer):
    from rerank import Reranker, RerankerConfig

    return Reranker(tiny_model, tokenizer, RerankerConfig())


@pytest.fixture(scope="session")
def real_reranker():
    """The real default model (marked tests only)."""
    from rerank import Reranker

    return Reranker.from_pretrained()
