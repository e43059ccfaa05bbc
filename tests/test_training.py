"""Training data, the Trainer subclass, YAML + overrides, resume, output loading, 2-process ZeRO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import make_tiny_llama
from transformers import TrainerCallback

from rerank.labels import LabelConfig, LabelRecord, run_labelling
from rerank.prompting.prompts import encode_prompt, encode_target
from rerank.training.data import ExampleOptions, ListwiseCollator, build_dataset, encode_example
from rerank.training.losses import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_accelerate_env(monkeypatch):
    """rerank.training.train sets ACCELERATE_USE_CPU for CPU runs; keep it from leaking into later tests."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", os.environ.get("ACCELERATE_USE_CPU", ""))
    if not os.environ["ACCELERATE_USE_CPU"]:
        monkeypatch.delenv("ACCELERATE_USE_CPU")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A 2-layer random Llama over the real tokenizer, saved like a hub model folder."""
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_llama(len(tokenizer), layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def label_file(tmp_path_factory):
    """Complete labels (qrels oracle) for 16 synthetic queries of 4 to 28 passages: built here, so the
    training tests never depend on ../shared/data and never skip."""
    root = tmp_path_factory.mktemp("collection")
    topics = ["rope", "bees", "rivers", "engines", "the moon", "bread", "chess", "volcanoes"]
    lists = {
        f"q{q}": [f"d{q}-{i}" for i in range(4 + 8 * (q % 4))] for q in range(16)
    }  # some prompts exceed 600 tokens
    corpus = {
        d: f"passage {d} is about {topics[i % 8]}: " + " ".join(topics[(i + k) % 8] for k in range(40))
        for docs in lists.values()
        for i, d in enumerate(docs)
    }
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in corpus.items()))
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": f"what is known about {topics[int(q[1:]) % 8]}"}) + "\n" for q in lists)
    )
    (root / "qrels.txt").write_text("".join(f"{q} 0 {docs[int(q[1:]) % len(docs)]} 1\n" for q, docs in lists.items()))
    (root / "run.bm25.trec").write_text(
        "".join(f"{q} Q0 {d} {r + 1} {100 - r} bm25\n" for q, docs in lists.items() for r, d in enumerate(docs))
    )
    out = tmp_path_factory.mktemp("labels") / "synthetic.qrels.jsonl"
    run_labelling(LabelConfig(input=str(root), output=str(out), teacher="qrels", progress=False))
    return str(out)


def _record():
    return LabelRecord(
        "q1",
        "what is [2] rope",
        ["a", "b", "c"],
        ["c", "a", "b"],
        {"a": "A rope is [1] thick.", "b": "Cable " * 50, "c": "Rope: twisted fibres."},
    )


def test_example_is_the_inference_prompt_plus_target(tokenizer):
    rec = _record()
    ex = encode_example(tokenizer, rec, ExampleOptions(max_passage_tokens=20))
    prompt = encode_prompt(tokenizer, rec.query, [rec.passages[d] for d in rec.initial_list], 20)
    n = len(prompt.input_ids)
    assert ex["input_ids"][:n] == prompt.input_ids  # identical to what inference sees
    assert ex["labels"][:n] == [IGNORE_INDEX] * n  # no loss on the prompt
    assert ex["input_ids"][n:] == ex["labels"][n:] == encode_target(tokenizer, [2, 0, 1])
    assert tokenizer.decode(ex["labels"][n:]) == "[3] > [1] > [2]<|im_end|>"
    assert ex["rank_ids"][n:] == [1, 1, 1, 0, 2, 2, 2, 0, 3, 3, 3, 0] and set(ex["rank_ids"][:n]) == {0}
    assert ex["truncated_passages"] == 1  # "Cable " * 50 cut to 20 tokens


def test_shuffle_and_top_k_keep_the_target_consistent(tokenizer):
    rec = LabelRecord(
        "q",
        "query",
        [f"d{i}" for i in range(8)],
        [f"d{i}" for i in (5, 2, 7, 0, 1, 3, 4, 6)],
        {f"d{i}": f"passage number {i}" for i in range(8)},
    )
    opts = ExampleOptions(max_passage_tokens=10, shuffle_initial_order=True, seed=3)
    a, b = encode_example(tokenizer, rec, opts, index=4), encode_example(tokenizer, rec, opts, index=4)
    assert a == b  # deterministic: a resumed run sees the same data
    plain = encode_example(tokenizer, rec, ExampleOptions(max_passage_tokens=10), index=4)
    assert a["input_ids"] != plain["input_ids"]
    # decode the shuffled prompt's passage order and check the target still ranks d5 > d2 > d7 ...
    text = tokenizer.decode(a["input_ids"])
    shown = [int(text.split(f"[{k}] passage number ")[1][0]) for k in range(1, 9)]
    target = tokenizer.decode([t for t in a["labels"] if t != IGNORE_INDEX]).replace("<|im_end|>", "")
    ranked = [shown[int(x.strip(" []")) - 1] for x in target.split(">")]
    assert ranked == [5, 2, 7, 0, 1, 3, 4, 6]
    top = encode_example(tokenizer, rec, ExampleOptions(max_passage_tokens=10, passages_per_example=4))
    assert top["num_passages"] == 4
    assert tokenizer.decode([t for t in top["labels"] if t != IGNORE_INDEX]) == "[3] > [1] > [2] > [4]<|im_end|>"


def test_shuffle_fraction_shuffles_a_seeded_share(tokenizer):
    rec = LabelRecord(
        "q",
        "query",
        [f"d{i}" for i in range(6)],
        [f"d{i}" for i in range(6)],
        {f"d{i}": f"passage {i}" for i in range(6)},
    )
    plain = encode_example(tokenizer, rec, ExampleOptions(max_passage_tokens=10))["input_ids"]
    half = ExampleOptions(max_passage_tokens=10, shuffle_fraction=0.5, seed=1)
    shuffled = [encode_example(tokenizer, rec, half, index=i)["input_ids"] != plain for i in range(200)]
    assert 70 <= sum(shuffled) <= 130  # about half; a shuffle may rarely return the identity
    again = [encode_example(tokenizer, rec, half, index=i)["input_ids"] != plain for i in range(200)]
    assert again == shuffled  # a resumed run sees the same data
    none = ExampleOptions(max_passage_tokens=10, shuffle_fraction=0.0)
    assert all(encode_example(tokenizer, rec, none, index=i)["input_ids"] == plain for i in range(20))
    with pytest.raises(ValueError, match="shuffle_fraction must be in"):
        ExampleOptions(shuffle_fraction=1.5)
    with pytest.raises(ValueError, match="set one of them"):
        ExampleOptions(shuffle_initial_order=True, shuffle_fraction=0.3)
    from rerank.training.arguments import LazyRankTrainingArguments

    with pytest.raises(ValueError, match="shuffle_fraction must be in"):  # refused before any model loads
        LazyRankTrainingArguments(output_dir=".", shuffle_fraction=-0.1, remove_unused_columns=False)


def test_dataset_collator_and_length_filter(tokenizer, label_file, caplog):
    caplog.set_level("INFO", logger="rerank.training.data")
    ds = build_dataset(tokenizer, label_file, ExampleOptions(max_passage_tokens=30, max_seq_length=600))
    assert 0 < len(ds) <= 16
    assert "over max_seq_length=600 dropped" in caplog.text
    batch = ListwiseCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    short = int(batch["attention_mask"].sum(1).argmin())
    pad = batch["attention_mask"][short] == 0
    assert (
        pad.any() and (batch["labels"][short][pad] == IGNORE_INDEX).all() and (batch["rank_ids"][short][pad] == 0).all()
    )
    assert ((batch["rank_ids"] > 0) <= (batch["labels"] != IGNORE_INDEX)).all()


def test_parse_args_yaml_and_overrides(tmp_path):
    from rerank.training.train import parse_args

    cfg = tmp_path / "x.yaml"
    cfg.write_text(
        "train_file: a.jsonl\noutput_dir: out\nmax_passage_tokens: 50\nlora_target_modules: [q_proj]\n"
        "learning_rate: 1.0e-4\nreport_to: none\n"
    )
    config = parse_args(
        [
            str(cfg),
            "--max_steps",
            "3",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--use_lora",
            "false",
            "--objective",
            "lm",
        ]
    )
    args, lora = config.args, config.lora
    assert (args.train_file, args.max_passage_tokens, args.learning_rate, args.max_steps) == ("a.jsonl", 50, 1e-4, 3)
    assert lora.lora_target_modules == ["q_proj", "v_proj"] and lora.use_lora is False
    assert config.objective.name == "lm" and config.objective.scoring == "generate"
    assert args.remove_unused_columns is False
    with pytest.raises(ValueError, match="objective must be"):
        parse_args([str(cfg), "--objective", "focal"])
    (tmp_path / "old.yaml").write_text(cfg.read_text() + "loss: lm\n")
    with pytest.raises(ValueError, match="not used by the HfArgumentParser: \\['loss'\\]"):  # one spelling per flag
        parse_args([str(tmp_path / "old.yaml")])
    shipped = parse_args([str(REPO / "configs/train/default-cpu.yaml"), "--output_dir", str(tmp_path / "o")])
    assert shipped.lora.use_lora and shipped.objective.name == "importance"
    peft = shipped.lora.peft_config(30)
    assert (peft.r, peft.lora_alpha, peft.lora_dropout, sorted(peft.target_modules), peft.layers_to_transform) == (
        8,
        16,
        0.05,
        ["k_proj", "o_proj", "q_proj", "v_proj"],
        None,
    )
    head = parse_args([str(REPO / "configs/train/head-cpu.yaml"), "--output_dir", str(tmp_path / "h")])
    assert head.objective.scoring == "head" and head.lora.peft_config(30).layers_to_transform == list(range(15, 30))


def test_each_objective_validates_its_own_options(tmp_path):
    from rerank.training.objectives import HeadArguments, IdentifierRankingArguments, LanguageModelArguments
    from rerank.training.train import parse_args

    with pytest.raises(ValueError, match="ranking_loss must be"):
        IdentifierRankingArguments(ranking_loss="hinge")
    with pytest.raises(ValueError, match="ranking_lm_loss must be"):
        IdentifierRankingArguments(ranking_lm_loss="none")  # the tree is packed after the target
    with pytest.raises(ValueError, match="head_lm_loss must be"):
        HeadArguments(head_lm_loss="focal")
    with pytest.raises(ValueError, match="head_weight must be"):
        HeadArguments(head_weight=0)
    with pytest.raises(ValueError, match="loss_normalize"):
        LanguageModelArguments(loss_normalize="rows")
    with pytest.raises(ValueError, match="flash-attention"):
        parse_args(
            [
                "--train_file",
                "a.jsonl",
                "--output_dir",
                str(tmp_path),
                "--objective",
                "identifier_ranking",
                "--attn_implementation",
                "flash_attention_2",
            ]
        )


class _Crash(TrainerCallback):
    """Simulates a kill right after the checkpoint at ``step`` was written."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated kill")


def _losses(metrics):
    return [(h["step"], round(h["loss"], 5)) for h in metrics["log_history"] if "loss" in h]


def test_train_resume_and_load(tmp_path, tiny_dir, label_file):
    from rerank import Reranker
    from rerank.training.train import parse_args, train

    base = [
        "--model_name_or_path",
        tiny_dir,
        "--train_file",
        label_file,
        "--max_passage_tokens",
        "24",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--learning_rate",
        "5e-3",
        "--per_device_train_batch_size",
        "2",
        "--report_to",
        "none",
        "--seed",
        "7",
        "--shuffle_initial_order",
        "true",
    ]
    full = train(parse_args(base + ["--output_dir", str(tmp_path / "a")]))
    assert full["global_step"] == 4 and len(_losses(full)) == 4
    out = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train(parse_args(base + ["--output_dir", out]), callbacks=[_Crash(2)])
    assert (Path(out) / "checkpoint-2").is_dir()
    resumed = train(parse_args(base + ["--output_dir", out, "--resume_from_checkpoint", "auto"]))
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["global_step"] == 4
    # same data order and state: steps 3-4 reproduce the uninterrupted run's losses
    assert _losses(resumed)[-2:] == _losses(full)[-2:]
    # Resuming on other labels or another objective is refused before anything trains, naming the change.
    other = Path(out) / "other.jsonl"
    other.write_text(Path(label_file).read_text())
    with pytest.raises(ValueError, match=r"objective: 'importance' -> 'lm'"):
        train(parse_args(base + ["--output_dir", out, "--resume_from_checkpoint", "auto", "--objective", "lm"]))
    with pytest.raises(ValueError, match=r"train_file: .*synthetic.qrels.jsonl' -> .*other.jsonl'"):
        train(parse_args(base + ["--output_dir", out, "--resume_from_checkpoint", "auto", "--train_file", str(other)]))
    rr = Reranker.from_pretrained(out, max_passage_tokens=24)  # LoRA adapter folder, merged on load
    assert sorted(rr.rerank("what is rope", ["a rope", "a cable", "a fish"]).order) == [0, 1, 2]


def test_max_train_minutes_stops_and_saves(tmp_path, tiny_dir, label_file):
    from rerank.training.train import parse_args, train

    out = tmp_path / "budget"
    metrics = train(
        parse_args(
            [
                "--model_name_or_path",
                tiny_dir,
                "--train_file",
                label_file,
                "--max_passage_tokens",
                "24",
                "--max_steps",
                "50",
                "--max_train_minutes",
                "1e-9",
                "--output_dir",
                str(out),
                "--report_to",
                "none",
                "--save_strategy",
                "no",
            ]
        )
    )
    # the budget is spent before the first step ends: exactly one step, then the usual final save
    assert (metrics["global_step"], metrics["max_steps"]) == (1, 50)
    assert (out / "adapter_model.safetensors").is_file()
    with pytest.raises(ValueError, match="max_train_minutes"):
        parse_args(["--train_file", label_file, "--max_train_minutes", "0"])


def test_init_adapter_continues_a_trained_lora(tmp_path, tiny_dir, label_file):
    """Domain adaptation starts from a trained adapter: its weights, not a fresh LoRA (whose B is zero)."""
    from safetensors.torch import load_file

    from rerank.training.train import load_model, parse_args, train

    common = [
        "--model_name_or_path",
        tiny_dir,
        "--train_file",
        label_file,
        "--max_passage_tokens",
        "24",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--learning_rate",
        "5e-3",
        "--lora_r",
        "4",
    ]
    first = tmp_path / "first"
    train(parse_args(common + ["--max_steps", "2", "--output_dir", str(first)]))
    saved = load_file(first / "adapter_model.safetensors")
    model, _ = load_model(
        parse_args(common + ["--output_dir", str(tmp_path / "x"), "--init_adapter", str(first), "--lora_r", "8"])
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert trainable and all("lora_" in n for n in trainable)
    for key, value in saved.items():  # peft stores "...lora_A.weight", the live module "...lora_A.default.weight"
        live = key.replace("lora_A.weight", "lora_A.default.weight").replace("lora_B.weight", "lora_B.default.weight")
        assert torch.equal(state[live], value), key
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in saved.items())
    assert next(v for k, v in saved.items() if "lora_A" in k).shape[0] == 4  # the adapter's rank wins over --lora_r 8
    with pytest.raises(ValueError, match="holds no adapter_config.json"):
        parse_args(common + ["--output_dir", str(tmp_path / "y"), "--init_adapter", str(tmp_path)])
    with pytest.raises(ValueError, match="needs use_lora"):
        parse_args(common + ["--output_dir", str(tmp_path / "y"), "--init_adapter", str(first), "--use_lora", "false"])


def test_an_adapter_naming_the_default_model_loads_on_the_converted_file(tmp_path, tiny_dir, label_file, monkeypatch):
    """The shipped adapter (and one continued from it) names "SmolLM2-135M-Instruct": our converted
    folder, not a hub id. Loading such a folder offline must use that file, with the adapter applied."""
    import rerank.models as models
    from rerank.training.train import parse_args, train

    trained = tmp_path / "trained"
    train(
        parse_args(
            [
                "--model_name_or_path",
                tiny_dir,
                "--train_file",
                label_file,
                "--max_passage_tokens",
                "24",
                "--report_to",
                "none",
                "--save_strategy",
                "no",
                "--learning_rate",
                "5e-2",
                "--lora_r",
                "4",
                "--max_steps",
                "2",
                "--output_dir",
                str(trained),
            ]
        )
    )
    packaged = tmp_path / "packaged"  # like rerank/weights/: adapter files only, no tokenizer
    packaged.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (packaged / name).write_bytes((trained / name).read_bytes())
    config = json.loads((packaged / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = models.DEFAULT_MODEL_NAME
    (packaged / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.setattr(models, "default_model_path", lambda: Path(tiny_dir))

    merged, tok = models.load_model_and_tokenizer(str(packaged), device="cpu", dtype="float32")
    plain, _ = models.load_model_and_tokenizer(tiny_dir, device="cpu", dtype="float32")
    direct, _ = models.load_model_and_tokenizer(str(trained), device="cpu", dtype="float32")
    ids = torch.tensor([tok("a rope and a cable").input_ids])
    with torch.no_grad():
        out, base, ref = (m(ids).logits for m in (merged, plain, direct))
    assert torch.allclose(out, ref, atol=1e-5)  # the same adapter, whichever way its base is named
    assert not torch.allclose(out, base, atol=1e-4)  # and it was applied


def test_stop_at_step_keeps_the_schedule_of_max_steps(tmp_path, tiny_dir, label_file):
    """A segment cut at step k of an n-step run: same LR as the n-step schedule there, saved, resumable."""
    from rerank.training.train import parse_args, train

    out = tmp_path / "cut"
    common = [
        "--model_name_or_path",
        tiny_dir,
        "--train_file",
        label_file,
        "--max_passage_tokens",
        "24",
        "--max_steps",
        "8",
        "--learning_rate",
        "1e-3",
        "--lr_scheduler_type",
        "linear",
        "--logging_steps",
        "1",
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--save_strategy",
        "no",
    ]
    metrics = train(parse_args(common + ["--stop_at_step", "3"]))
    assert (metrics["global_step"], metrics["max_steps"]) == (3, 8)
    lrs = [h["learning_rate"] for h in metrics["log_history"] if "learning_rate" in h]
    assert lrs == pytest.approx([1e-3 * (8 - k) / 8 for k in range(3)])  # linear over 8 steps, logged before each step
    assert (out / "adapter_model.safetensors").is_file()
    with pytest.raises(ValueError, match="stop_at_step"):
        parse_args(common + ["--stop_at_step", "0"])


def test_full_finetune_output_loads(tmp_path, tiny_dir, label_file):
    from rerank import Reranker
    from rerank.training.train import parse_args, train

    out = tmp_path / "full"
    metrics = train(
        parse_args(
            [
                "--model_name_or_path",
                tiny_dir,
                "--train_file",
                label_file,
                "--max_passage_tokens",
                "24",
                "--max_steps",
                "1",
                "--use_lora",
                "false",
                "--objective",
                "lm",
                "--output_dir",
                str(out),
                "--report_to",
                "none",
                "--save_strategy",
                "no",
            ]
        )
    )
    assert metrics["global_step"] == 1 and not metrics["use_lora"]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert Reranker.from_pretrained(str(out)).model.config.num_hidden_layers == 2


@pytest.mark.multiproc
def test_two_process_zero3_cpu(tmp_path, tiny_dir, label_file):
    """`accelerate launch` with 2 CPU processes under DeepSpeed ZeRO-3: trains, exits cleanly, output loads."""
    from rerank import Reranker

    out = tmp_path / "z3"
    env = dict(
        os.environ,
        TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "configs/accelerate/cpu_zero3.yaml",
        "-m",
        "rerank.training.train",
        "configs/train/default-cpu.yaml",
        "--model_name_or_path",
        tiny_dir,
        "--train_file",
        label_file,
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--save_steps",
        "100",
        "--max_passage_tokens",
        "24",
        "--gradient_accumulation_steps",
        "1",
        "--warmup_steps",
        "0",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    (tmp_path / "launch.log").write_text(log)
    key_lines = "\n".join(
        line for line in log.splitlines() if any(k in line for k in ("Error", "terminate", "Traceback", "rc="))
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{key_lines[-3000:]}\n...\n{log[-1500:]}"
    assert "terminate called" not in log
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["distributed_type"].endswith("DEEPSPEED")
    assert metrics["global_step"] == 3 and all(torch.isfinite(torch.tensor(loss)) for _, loss in _losses(metrics))
    assert sorted(Reranker.from_pretrained(str(out), max_passage_tokens=24).rerank("q", ["a", "b"]).order) == [0, 1]
