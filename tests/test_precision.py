"""CPU precision: detection, fallback with a warning, int8 conversion of the decoder's linear layers."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from support import load_script, make_tiny_llama

from rerank import Reranker
from rerank.engine.passage_head import score_positions
from rerank.precision import AUTO_ORDER, PRECISIONS, apply_cpu_precision, cpu_supports, resolve_precision
from rerank.prompting.prompts import encode_prompt, relevance_token_ids


def test_auto_only_picks_measured_precisions_the_cpu_runs():
    assert cpu_supports("fp32")
    chosen = resolve_precision("auto")
    assert chosen in AUTO_ORDER and cpu_supports(chosen)
    assert resolve_precision(None) == chosen


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_unsupported_precision_falls_back_to_fp32_with_a_warning(precision, caplog):
    with caplog.at_level(logging.WARNING, logger="rerank.precision"):
        got = resolve_precision(precision)
    if cpu_supports(precision):
        assert got == precision and not caplog.records
    else:
        assert got == "fp32" and "running fp32 instead" in caplog.text


def test_bad_precision_is_named():
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int4")
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "int8"}


def test_unknown_precision_is_refused_before_loading(monkeypatch):
    import rerank.reranker

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the precision was checked")

    monkeypatch.setattr(rerank.reranker, "load_model_and_tokenizer", must_not_load)
    with pytest.raises(ValueError, match="precision must be one of"):
        Reranker.from_pretrained(precision="int4")


def test_dtype_and_precision_together_are_refused_before_loading():
    with pytest.raises(ValueError, match="dtype .* or precision"):
        Reranker.from_pretrained(dtype="float32", precision="int8")


@pytest.mark.skipif(not cpu_supports("int8"), reason="this CPU has no fbgemm/x86 int8 kernels")
def test_int8_quantizes_the_decoder_and_keeps_the_head(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=4)
    quantized = apply_cpu_precision(copy.deepcopy(model), "int8")
    linears = [m for m in quantized.model.modules() if type(m).__name__ == "Linear"]
    assert linears and all(type(m).__module__.startswith("torch.ao.nn.quantized") for m in linears)
    assert type(quantized.lm_head) is torch.nn.Linear  # the readout stays fp32
    enc = encode_prompt(
        tokenizer, "bees", ["Bees keep warm by shivering.", "Paris is in France.", "The hive stays warm in winter."], 50
    )
    yes, no = relevance_token_ids(tokenizer)
    dense = score_positions(model, [enc.input_ids], [enc.passage_end_positions()], yes, no, 0).scores[0]
    approx = score_positions(quantized, [enc.input_ids], [enc.passage_end_positions()], yes, no, 0).scores[0]
    assert approx != dense  # the arithmetic changed ...
    assert max(abs(a - b) for a, b in zip(dense, approx)) < 0.5  # ... by quantization noise only


@pytest.mark.skipif(not cpu_supports("int8"), reason="this CPU has no fbgemm/x86 int8 kernels")
def test_int8_of_named_layers_leaves_the_others_fp32(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=4)
    quantized = apply_cpu_precision(copy.deepcopy(model), "int8", ("gate_proj", "up_proj"))
    kinds = {
        name.rsplit(".", 1)[-1]: type(m).__module__.startswith("torch.ao.nn.quantized")
        for name, m in quantized.model.named_modules()
        if type(m).__name__ == "Linear"
    }
    assert kinds == {
        "q_proj": False,
        "k_proj": False,
        "v_proj": False,
        "o_proj": False,
        "gate_proj": True,
        "up_proj": True,
        "down_proj": False,
    }
    with pytest.raises(ValueError, match="name none of the decoder's linear layers"):
        apply_cpu_precision(copy.deepcopy(model), "int8", ("lm_head",))


@pytest.mark.parametrize("bad", ["int4", "int8[]", "int8[gate_proj+]", "bf16[up_proj]"])
def test_head_speed_benchmark_refuses_an_unknown_precision_before_loading(bad, monkeypatch, capsys):
    bench = load_script("eval/bench_head_speed.py")

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the precisions were checked")

    monkeypatch.setattr(bench.Reranker, "from_pretrained", must_not_load)
    with pytest.raises(SystemExit):
        bench.main(["--precisions", "int8", "int8[gate_proj+up_proj]", bad, "--schedules", "--out", "/none/x.json"])
    assert f"precisions ['{bad}']" in capsys.readouterr().err
