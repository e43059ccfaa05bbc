"""Shared fixtures: the default model's real tokenizer and tiny randomly initialised models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Haystack decides at import whether to send usage events; tests run offline.
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def shared_data(name: str) -> str:
    """Path of a folder in ../shared/data (read in place, never copied)."""
    root = os.environ.get("LAZYRANK_SHARED_DATA", SHARED_DATA)
    path = os.path.abspath(os.path.join(root, name))
    if not os.path.isdir(path):
        pytest.skip(f"shared data folder {path} not present")
    return path


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


def make_tiny_llama(vocab_size: int, *, layers: int = 4, seed: int = 0, max_positions: int = 8192):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=max_positions, rope_theta=10000.0, tie_word_embeddings=True,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    model.eval()
    return model


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
