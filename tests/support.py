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


def tiny_head_training_args(tokenizer, tmp_path: Path, rows: list[dict], *options: str, layers: int = 4, seed: int = 0):
    """``rerank train`` arguments for a tiny randomly initialised model (saved with ``tokenizer`` under
    ``tmp_path/tiny``) on the label rows ``rows``, head objective, LoRA on q/v, output in ``tmp_path/out``;
    ``options`` are added last (and win)."""
    import json

    from rerank.training.train import parse_args

    folder = tmp_path / "tiny"
    make_tiny_llama(len(tokenizer), layers=layers, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        f"--model_name_or_path={folder}",
        f"--train_file={labels}",
        f"--output_dir={tmp_path / 'out'}",
        "--objective=head",
        "--learning_rate=3e-3",
        "--lora_r=8",
        "--logging_steps=1",
        "--save_strategy=no",
        "--report_to=none",
    ]
    return parse_args(common + list(options))


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
