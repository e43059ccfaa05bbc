"""Helpers the tests share: where ../shared/data lives, and tiny randomly initialised models."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def shared_data(name: str) -> str:
    """Path of a folder in ../shared/data (read in place, never copied)."""
    root = os.environ.get("LAZYRANK_SHARED_DATA", SHARED_DATA)
    path = os.path.abspath(os.path.join(root, name))
    if not os.path.isdir(path):
        pytest.skip(f"shared data folder {path} not present")
    return path


def load_script(relative: str) -> ModuleType:
    """Import a script of the repository (``scripts/x.py``, ``eval/y.py``: no packages) as a module."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_llama(vocab_size: int, *, layers: int = 4, seed: int = 0, max_positions: int = 8192):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model
