"""Time-to-first-token of pruned vs unpruned prefill on a GPU, 7B/8B shapes, bf16, sdpa.

One prepared command (under 5 minutes on an H100; installs nothing; random weights, since timing
does not depend on their values):

    python eval/bench_pruning_gpu.py                      # Llama-3-8B shapes at 8k, 16k, 32k tokens
    python eval/bench_pruning_gpu.py --arch qwen2-7b      # Qwen2-7B shapes
    python eval/bench_pruning_gpu.py --scoring head       # head scoring: 20 / 100 passages and 32k tokens

Without CUDA it prints a message and exits 0 (``--tiny`` runs a small model on CPU instead, to
check the script itself). Writes ``eval/results/pruning_gpu.json`` and prints a table:
median TTFT (prefill, logits of the last position only) unpruned vs the default ``PruningConfig``,
the speedup, ``computed_fraction``, and the achieved TFLOP/s of the unpruned prefill (matmul FLOPs
of the layers with the causal half of the attention, over the measured time).

Prompts imitate the listwise layout: a protected head, then passages of ``--passage_tokens`` body
tokens each behind a protected identifier, then a protected closing instruction.

``--scoring head`` times head scoring instead (``rerank.engine.passage_head`` dense vs
``rerank.engine.head_pruning`` with the default schedule): one readout after every passage body, at
``--passages`` passages and at each ``--tokens`` length, with the peak GPU memory of each and the
fraction of token-layers computed; it writes ``eval/results/head_pruning_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

ARCHS = {
    "llama3-8b": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
    "qwen2-7b": dict(
        model_type="qwen2",
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
    "tiny": dict(
        model_type="llama",
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    ),
}


def build_model(arch: str, max_tokens: int, device: torch.device, dtype: torch.dtype):
    """A randomly initialised causal LM of the named shapes, created directly on ``device``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(ARCHS[arch])
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(
        model_type, max_position_embeddings=max(max_tokens + 1024, 8192), tie_word_embeddings=False, **spec
    )
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def listwise_prompt(length: int, vocab: int, passage_tokens: int, seed: int) -> tuple[list[int], list[bool]]:
    """Random ids with the reranking structure: protected head / ``[i]`` ids / tail, prunable bodies."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab, (length,), generator=g).tolist()
    head, tail, ident = 120, 90, 5
    mask = [False] * length
    pos = head
    while pos + ident + passage_tokens <= length - tail:
        pos += ident
        for t in range(pos, pos + passage_tokens):
            mask[t] = True
        pos += passage_tokens
    return ids, mask


def layer_flops(config, tokens: int) -> float:
    """Matmul FLOPs of a full prefill's decoder layers (causal attention counted half), lm_head on 1 token."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    linear = 2 * tokens * (h * q + 2 * h * kv + q * h + 3 * h * inter)
    attention = 2 * 2 * config.num_attention_heads * head_dim * tokens * tokens / 2
    return layers * (linear + attention) + 2 * h * config.vocab_size


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def head_prompt(passages: int, vocab: int, passage_tokens: int, seed: int) -> tuple[list[int], list[bool], list[int]]:
    """A listwise prompt of ``passages`` bodies and the read position after each body (protected)."""
    length = 120 + passages * (5 + passage_tokens) + 90
    ids, mask = listwise_prompt(length, vocab, passage_tokens, seed)
    reads = [t + 1 for t in range(length - 1) if mask[t] and not mask[t + 1]]
    return ids, mask, reads


def _head_run(model, device, ids, mask, reads, pruning, *, pruned: bool):
    """One head-scoring call: (seconds, peak GB, prefill info)."""
    from rerank.engine.head_pruning import score_positions_pruned
    from rerank.engine.passage_head import score_positions

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    tick = time.perf_counter()
    if pruned:
        out = score_positions_pruned(model, [ids], [reads], [mask], 1, 2, pruning)
    else:
        out = score_positions(model, [ids], [reads], 1, 2, 0)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return time.perf_counter() - tick, peak, out.prefill


def head_rows(model, device, passages: list[int], tokens: list[int], passage_tokens: int, repeats: int, pruning):
    """Dense vs pruned head scoring: median seconds, peak memory and computed fraction per prompt size."""
    vocab = model.config.vocab_size
    sizes = [(n, None) for n in passages] + [(None, n) for n in tokens]
    rows = []
    for count, length in sizes:
        if length is not None:  # as many passages as fill the length
            count = max(1, (length - 210) // (5 + passage_tokens))
        ids, mask, reads = head_prompt(count, vocab, passage_tokens, count)

        prompt = (model, device, ids, mask, reads, pruning)
        _head_run(*prompt, pruned=False), _head_run(*prompt, pruned=True)  # warm-up at this size
        dense, pruned = [], []
        for _ in range(repeats):  # interleaved so drifts hit both alike
            dense.append(_head_run(*prompt, pruned=False))
            pruned.append(_head_run(*prompt, pruned=True))
        d, p = statistics.median(t for t, _, _ in dense), statistics.median(t for t, _, _ in pruned)
        rows.append(
            {
                "tokens": len(ids),
                "passages": count,
                "dense_s": d,
                "pruned_s": p,
                "ratio": p / d,
                "computed_fraction": pruned[-1][2].computed_fraction,
                "dense_peak_gb": max(m for _, m, _ in dense),
                "pruned_peak_gb": max(m for _, m, _ in pruned),
            }
        )
        print(f"{len(ids):>6} tokens, {count} passages: dense {d:.3f}s, pruned {p:.3f}s ({p / d:.2f}x)", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _write(args, default_output: bool, arch, device, dtype, config, pruning, rows, start) -> None:
    result = {
        "arch": arch,
        "scoring": args.scoring,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "attn_implementation": config._attn_implementation,
        "torch": torch.__version__,
        "pruning": asdict(pruning),
        "repeats": args.repeats,
        "rows": rows,
        "wall_seconds": time.perf_counter() - start,
    }
    if not args.tiny or not default_output:  # a --tiny check writes only where asked
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {args.output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="llama3-8b", choices=sorted(ARCHS))
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passage_tokens", type=int, default=90)
    parser.add_argument("--tiny", action="store_true", help="small model on CPU, short prompts: checks the script")
    parser.add_argument(
        "--scoring", default="prefill", choices=["prefill", "head"], help="time the LM prefill or head scoring"
    )
    parser.add_argument("--passages", type=int, nargs="+", default=[20, 100], help="head scoring: passages per prompt")
    parser.add_argument(
        "--output", default=None, help="JSON path (default: eval/results/{pruning,head_pruning}_gpu.json)"
    )
    args = parser.parse_args(argv)
    default_output = args.output is None
    if default_output:
        name = "head_pruning_gpu.json" if args.scoring == "head" else "pruning_gpu.json"
        args.output = str(ROOT / "eval" / "results" / name)

    from rerank import PruningConfig
    from rerank.engine.pruning import PrunedSession
    from rerank.engine.session import DenseSession

    if args.tiny:
        device, dtype, arch, tokens = torch.device("cpu"), torch.float32, "tiny", [512, 1024]
        args.passages = [4, 8]
    elif not torch.cuda.is_available():
        print(
            "bench_pruning_gpu: no CUDA device here; skipping (run it where a GPU is lent, or use --tiny "
            "to check the script on CPU)."
        )
        return
    else:
        device, dtype, arch, tokens = torch.device("cuda"), torch.bfloat16, args.arch, args.tokens
    start = time.perf_counter()
    model = build_model(arch, max(tokens), device, dtype)
    config = model.config
    print(
        f"{arch}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params, {dtype}, "
        f"{config._attn_implementation}, built in {time.perf_counter() - start:.0f}s",
        flush=True,
    )
    pruning = PruningConfig()
    pad = 0
    if args.scoring == "head":
        rows = head_rows(model, device, args.passages, tokens, args.passage_tokens, args.repeats, pruning)
        _write(args, default_output, arch, device, dtype, config, pruning, rows, start)
        print(
            f"{'tokens':>7} {'passages':>9} {'dense s':>8} {'pruned s':>9} {'ratio':>6} {'computed':>9} {'peak GB':>13}"
        )
        for r in rows:
            print(
                f"{r['tokens']:>7} {r['passages']:>9} {r['dense_s']:>8.3f} {r['pruned_s']:>9.3f} {r['ratio']:>6.2f} "
                f"{r['computed_fraction']:>9.3f} {r['dense_peak_gb']:>6.1f}/{r['pruned_peak_gb']:<6.1f}"
            )
        return

    def timed(session, ids, mask):
        sync(device)
        tick = time.perf_counter()
        session.prefill([ids], [mask])
        sync(device)
        return time.perf_counter() - tick, session.info

    warm_ids, warm_mask = listwise_prompt(min(tokens), config.vocab_size, args.passage_tokens, 0)
    timed(DenseSession(model, pad), warm_ids, warm_mask)
    timed(PrunedSession(model, pad, pruning), warm_ids, warm_mask)
    rows = []
    for n in tokens:
        ids, mask = listwise_prompt(n, config.vocab_size, args.passage_tokens, n)
        dense_t, pruned_t, info = [], [], None
        for _ in range(args.repeats):  # interleaved so drifts hit both alike
            dense_t.append(timed(DenseSession(model, pad), ids, mask)[0])
            seconds, info = timed(PrunedSession(model, pad, pruning), ids, mask)
            pruned_t.append(seconds)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        d, p = statistics.median(dense_t), statistics.median(pruned_t)
        row = {
            "tokens": n,
            "prunable": sum(mask),
            "ttft_unpruned_s": d,
            "ttft_pruned_s": p,
            "speedup": d / p,
            "computed_fraction": info.computed_fraction,
            "kept_tokens": info.kept_tokens,
            "unpruned_tflops": layer_flops(config, n) / d / 1e12,
            "ttft_unpruned_all_s": dense_t,
            "ttft_pruned_all_s": pruned_t,
        }
        rows.append(row)
        print(
            f"{n:>6} tokens: unpruned {d:.3f}s, pruned {p:.3f}s, {d / p:.2f}x, computed "
            f"{info.computed_fraction:.3f}, unpruned {row['unpruned_tflops']:.0f} TFLOP/s",
            flush=True,
        )
    _write(args, default_output, arch, device, dtype, config, pruning, rows, start)
    print(f"{'tokens':>7} {'unpruned s':>11} {'pruned s':>9} {'speedup':>8} {'computed':>9} {'TFLOP/s':>8}")
    for r in rows:
        print(
            f"{r['tokens']:>7} {r['ttft_unpruned_s']:>11.3f} {r['ttft_pruned_s']:>9.3f} {r['speedup']:>8.2f} "
            f"{r['computed_fraction']:>9.3f} {r['unpruned_tflops']:>8.1f}"
        )


if __name__ == "__main__":
    main()
