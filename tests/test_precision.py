"""CPU precision: detection, fallback with a warning, bf16 linear layers, int8 of the decoder's linear layers."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from support import load_script, make_tiny_llama

from rerank import Reranker
from rerank.config import RerankerConfig
from rerank.engine.passage_head import score_positions
from rerank.precision import AUTO_ORDER, PRECISIONS, Bf16Linear, apply_cpu_precision, cpu_supports, resolve_precision
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


def test_bf16_linear_rounds_its_operands_to_bf16_and_answers_in_fp32():
    linear = torch.nn.Linear(2, 2, bias=True)
    with torch.no_grad():
        # 1 + 2**-10 is below bf16's resolution at 1 (2**-7): it rounds to 1; 0.5 and 0.25 are exact.
        linear.weight.copy_(torch.tensor([[1 + 2**-10, 0.5], [0.25, 1.0]]))
        linear.bias.copy_(torch.tensor([0.0, 2**-12]))
    x = torch.tensor([[1.0, 1.0]])
    assert linear(x).tolist()[0][0] == pytest.approx(1.5 + 2**-10)
    got = Bf16Linear(linear)(x)
    assert got.dtype == torch.float32 and got.tolist() == [[1.5, 1.25]]  # bias 2**-12 vanishes beside 1.25
    assert Bf16Linear(linear)(x.double()).dtype == torch.float64  # answers in its input's dtype


def test_bf16_swaps_the_decoders_linear_layers_and_keeps_the_stream_and_head_fp32(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=4)
    converted = apply_cpu_precision(copy.deepcopy(model), "bf16")
    kinds = {type(m).__name__ for name, m in converted.model.named_modules() if name.endswith("_proj")}
    assert kinds == {"Bf16Linear"}
    assert type(converted.lm_head) is torch.nn.Linear and converted.lm_head.weight.dtype == torch.float32
    assert converted.model.embed_tokens.weight.dtype == torch.float32
    norms = [m for name, m in converted.model.named_modules() if name.endswith("norm")]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    enc = encode_prompt(
        tokenizer, "bees", ["Bees keep warm by shivering.", "Paris is in France.", "The hive stays warm in winter."], 50
    )
    yes, no = relevance_token_ids(tokenizer)
    ids = torch.tensor([enc.input_ids])
    with torch.inference_mode():
        hidden = converted.model(input_ids=ids).last_hidden_state
    assert hidden.dtype == torch.float32
    dense = score_positions(model, [enc.input_ids], [enc.passage_end_positions()], yes, no, 0).scores[0]
    approx = score_positions(converted, [enc.input_ids], [enc.passage_end_positions()], yes, no, 0).scores[0]
    assert approx != dense  # the products were rounded ...
    assert max(abs(a - b) for a, b in zip(dense, approx)) < 0.1  # ... by bf16's rounding only


def test_a_bf16_reranker_files_its_reads_apart_from_fp32_reads(tokenizer):
    model = make_tiny_llama(len(tokenizer), seed=4)
    docs = ["Bees keep warm by shivering.", "Paris is in France.", "The hive stays warm in winter."]
    dense = Reranker(model, tokenizer, RerankerConfig(scoring="head", precision="fp32"))
    dense.window_memo = {}
    dense.rerank("bees", docs)
    ((key, read),) = dense.window_memo.items()
    assert len(key) == 2  # the dense fp32 key memos always had
    bf16 = Reranker(
        apply_cpu_precision(copy.deepcopy(model), "bf16"), tokenizer, RerankerConfig(scoring="head", precision="bf16")
    )
    bf16.window_memo = dict(dense.window_memo)
    bf16.rerank("bees", docs)
    assert len(bf16.window_memo) == 2  # read again, not served the fp32 readout
    (bf16_key,) = set(bf16.window_memo) - {key}
    assert bf16_key == (*key, "precision=bf16") and bf16.window_memo[bf16_key].scores != read.scores


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU default: a GPU keeps batches of 4")
def test_from_pretrained_reads_one_prompt_per_forward_on_cpu_unless_asked(tmp_path, tokenizer):
    folder = tmp_path / "tiny"
    make_tiny_llama(len(tokenizer), layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert Reranker.from_pretrained(str(folder)).config.batch_size == 1
    assert Reranker.from_pretrained(str(folder), batch_size=4).config.batch_size == 4
    assert RerankerConfig().batch_size == 4  # a config built by hand keeps the field's default
