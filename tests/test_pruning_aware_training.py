"""Training with pruning in the loop: the head objective reads relevance from a pruned prefill."""

from __future__ import annotations

import json

import pytest
import torch
from support import load_script, make_tiny_llama, tiny_head_training_args

from rerank.engine.head_pruning import score_positions_pruned
from rerank.labels import LabelRecord
from rerank.prompting.prompts import encode_prompt, relevance_token_ids
from rerank.training.data import ExampleOptions, ListwiseCollator, encode_example
from rerank.training.losses.passage_head import PassageHeadLoss
from rerank.training.objectives import HeadArguments, PassageHeadObjective

DOCS = [
    f"passage {i}: the {['llama', 'rope', 'river', 'engine'][i % 4]} has {i} legs and lives near water, far away"
    for i in range(6)
]


def _batch(tokenizer, sizes=(6, 4)):
    recs = []
    for n, size in enumerate(sizes):
        ids = [f"d{i}" for i in range(size)]
        recs.append(
            LabelRecord(
                f"q{n}",
                "which animal has legs",
                ids,
                list(reversed(ids)),
                {d: DOCS[i] for i, d in enumerate(ids)},
                {d: float(i) - 2.0 for i, d in enumerate(ids)},
            )
        )
    opts = ExampleOptions(passage_head=True, include_target=False, max_passage_tokens=30)
    return ListwiseCollator(tokenizer.pad_token_id)([encode_example(tokenizer, r, opts) for r in recs])


def _objective(tokenizer, spec: str | None, mse: float = 1.0) -> PassageHeadObjective:
    args = HeadArguments(head_teacher_weight=1.0, head_teacher_temperature=1.0, head_teacher_mse=mse, head_pruning=spec)
    loss = PassageHeadLoss("ranknet", 1.0, 1.0, mse)
    return PassageHeadObjective(loss, relevance_token_ids(tokenizer), pruning=args.pruning_config())


def test_squared_error_term_hand_computed():
    loss = PassageHeadLoss("ranknet", teacher_weight=0.0, teacher_mse=2.0)
    scores, ranks = torch.tensor([[1.0, 0.0, 5.0]]), torch.tensor([[1, 2, 0]])
    teacher = torch.tensor([[0.5, 1.0, float("nan")]])  # the padded third passage is ignored
    ranknet = float(PassageHeadLoss("ranknet", teacher_weight=0.0)(scores, ranks))
    # mean over the two real passages: (0.5^2 + 1^2) / 2 = 0.625, times mu = 2
    assert float(loss(scores, ranks, teacher)) == pytest.approx(ranknet + 2.0 * 0.625, abs=1e-6)
    assert loss.last_terms["teacher_mse"] == pytest.approx(0.625)
    with pytest.raises(ValueError, match="teacher_mse"):
        PassageHeadLoss(teacher_mse=-1.0)


def test_examples_carry_the_prunable_mask(tokenizer):
    batch = _batch(tokenizer)
    enc = encode_prompt(tokenizer, "which animal has legs", DOCS, 30)
    assert batch["prunable"][0].tolist() == [int(f) for f in enc.prunable_mask()]
    # the shorter list is padded with protected (0) flags, and no passage end is prunable
    assert batch["prunable"][1, batch["attention_mask"][1].sum() :].sum() == 0
    assert batch["prunable"].gather(1, batch["head_positions"]).sum() == 0


def test_keep_everything_is_the_dense_objective(tokenizer):
    """A schedule that keeps every token gives the dense objective's loss (the tail after the last
    passage end is not computed, and a causal readout cannot depend on it)."""
    model = make_tiny_llama(len(tokenizer), seed=1)
    batch = _batch(tokenizer)
    with torch.no_grad():
        dense = _objective(tokenizer, None)(model, {k: v.clone() for k, v in batch.items()})
        kept = _objective(tokenizer, "0.3:1.0,0.6:1.0")(model, {k: v.clone() for k, v in batch.items()})
    assert float(kept.loss) == pytest.approx(float(dense.loss), rel=1e-4)
    assert set(kept.terms) == {"rank_loss", "teacher_kl", "teacher_mse"}


@pytest.mark.parametrize("spec", ["0.3:0.5,0.6:0.25", "0.3:0.5,0.6:0.25+freeze"])
def test_pruned_scores_match_inference_and_carry_gradients(tokenizer, spec):
    """The objective's pruned scores equal what inference computes with the same schedule, and the
    loss back-propagates into the layers (survivors' states, and frozen tokens' keys and values),
    also below the first pruning layer."""
    model = make_tiny_llama(len(tokenizer), seed=2)
    batch = _batch(tokenizer, sizes=(6,))
    objective = _objective(tokenizer, spec)
    scores = objective._pruned_scores(model, batch, batch["head_positions"], batch["passage_ranks"], batch["prunable"])
    enc = encode_prompt(tokenizer, "which animal has legs", DOCS, 30)
    inference = score_positions_pruned(
        model,
        [enc.input_ids],
        [enc.passage_end_positions()],
        [enc.prunable_mask()],
        *relevance_token_ids(tokenizer),
        objective.pruning,
    )
    assert scores[0].tolist() == pytest.approx(inference.scores[0], abs=1e-4)
    assert inference.prefill.computed_fraction < 0.9  # something was pruned
    out = objective(model, {k: v.clone() for k, v in batch.items()})
    out.loss.backward()
    for layer in (0, len(model.model.layers) - 1):
        grad = model.model.layers[layer].mlp.down_proj.weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0


def test_pruning_options_are_checked():
    with pytest.raises(ValueError, match="pruning spec"):
        HeadArguments(head_pruning="half")
    with pytest.raises(ValueError, match="budget"):
        HeadArguments(head_pruning="default", head_pruning_budget="everything")
    with pytest.raises(ValueError, match="head_lm_loss"):
        PassageHeadObjective(
            PassageHeadLoss(),
            (1, 2),
            lm_loss=torch.nn.Identity(),
            pruning=HeadArguments(head_pruning="default").pruning_config(),
        )


def test_training_with_pruning_in_the_loop_fits(tmp_path, tokenizer):
    """``rerank train`` with head_pruning: the pruned readout moves toward the teacher (its loss falls)."""
    from rerank.training.train import train

    rows = []
    for i in range(8):
        ids = [f"{i}-{k}" for k in range(4)]
        rows.append(
            {
                "qid": str(i),
                "query": "which animal has legs",
                "initial_list": ids,
                "final_list": ids,
                "passages": {d: DOCS[k] for k, d in enumerate(ids)},
                "teacher_scores": {d: 2.0 - k for k, d in enumerate(ids)},
            }
        )
    args = tiny_head_training_args(
        tokenizer,
        tmp_path,
        rows,
        "--head_pruning=0.25:0.5,0.5:0.25",
        "--head_teacher_mse=1.0",
        "--head_teacher_temperature=1.0",
        "--max_passage_tokens=30",
        "--max_steps=12",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "down_proj",
        "--eval_fraction=0.25",
        "--eval_strategy=steps",
        "--eval_steps=6",
        "--prediction_loss_only=true",
        seed=3,
    )
    history = train(args)["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])  # 6 training lists, batch 1: 12 steps
    assert any("teacher_mse" in entry for entry in history)
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [6, 12]  # held-out lists, pruned
    # The output recommends its schedule: pruning="recommended" runs these weights with it.
    from rerank import PruningConfig, Reranker

    recommended = json.loads((tmp_path / "out" / "lazyrank.json").read_text())["pruning"]
    assert PruningConfig(**recommended["schedule"]) == PruningConfig.from_spec("0.25:0.5,0.5:0.25")
    rr = Reranker.from_pretrained(str(tmp_path / "out"), pruning="recommended", calibration=False)
    assert rr.config.pruning == PruningConfig.from_spec("0.25:0.5,0.5:0.25") and rr.config.scoring == "head"


def _folder_with_tuned_weights(tmp_path, tokenizer, schedule: dict | None):
    """A tiny full model folder whose lazyrank.json recommends head scoring (and a schedule with tuned weights)."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path / "model"
    base = make_tiny_llama(len(tokenizer), seed=4)
    base.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = {"reranker": {"scoring": "head"}}
    if schedule is not None:
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        tuned = get_peft_model(make_tiny_llama(len(tokenizer), seed=4), lora)
        tuned.peft_config["default"].base_model_name_or_path = str(folder)
        tuned.save_pretrained(folder / "pruned")
        settings["pruning"] = {"schedule": schedule, "weights": "pruned"}
    (folder / "lazyrank.json").write_text(json.dumps(settings))
    return folder, base


def test_recommended_pruning_loads_the_weights_tuned_for_it(tmp_path, tokenizer, caplog):
    from rerank import PruningConfig, Reranker

    schedule = {"layer_fractions": [0.25, 0.5], "keep_ratios": [0.5, 0.25]}
    folder, base = _folder_with_tuned_weights(tmp_path, tokenizer, schedule)
    q_dense = base.model.layers[0].self_attn.q_proj.weight
    # fp32 throughout: the test compares weights, which bf16 linear layers would round.
    tuned = Reranker.from_pretrained(str(folder), pruning="recommended", calibration=False, precision="fp32")
    assert tuned.config.pruning == PruningConfig(**schedule) and tuned.config.scoring == "head"
    assert not torch.allclose(tuned.model.model.layers[0].self_attn.q_proj.weight, q_dense)  # the LoRA, merged
    # The same schedule given by value also takes the tuned weights; another schedule the dense ones.
    same = Reranker.from_pretrained(str(folder), pruning=PruningConfig(**schedule), calibration=False, precision="fp32")
    assert torch.equal(
        same.model.model.layers[0].self_attn.q_proj.weight, tuned.model.model.layers[0].self_attn.q_proj.weight
    )
    with caplog.at_level("WARNING", logger="rerank.reranker"):
        other = Reranker.from_pretrained(str(folder), pruning="fast", calibration=False, precision="fp32")
    assert torch.equal(other.model.model.layers[0].self_attn.q_proj.weight, q_dense)
    assert "were tuned for the schedule" in caplog.text
    dense = Reranker.from_pretrained(str(folder), calibration=False, precision="fp32")
    assert dense.config.pruning is None
    assert torch.equal(dense.model.model.layers[0].self_attn.q_proj.weight, q_dense)
    res = tuned.rerank("which animal has legs", DOCS)
    assert sorted(res.order) == list(range(len(DOCS))) and res.stats.kept_tokens < res.stats.prompt_tokens


def test_recommended_pruning_errors_name_the_problem(tmp_path, tokenizer):
    from rerank import Reranker

    folder, _ = _folder_with_tuned_weights(tmp_path, tokenizer, None)
    with pytest.raises(ValueError, match="names no pruning schedule"):
        Reranker.from_pretrained(str(folder), pruning="recommended")
    (folder / "lazyrank.json").write_text(json.dumps({"pruning": {"schedule": {"keep": 1}}}))
    with pytest.raises(ValueError, match="lazyrank.json: pruning schedule"):
        Reranker.from_pretrained(str(folder), pruning="recommended")
    (folder / "lazyrank.json").write_text(json.dumps({"pruning": {"schedule": {}, "weights": "missing"}}))
    with pytest.raises(ValueError, match="holds no adapter_config.json"):
        Reranker.from_pretrained(str(folder), pruning="recommended")
    with pytest.raises(TypeError, match="pruning must be"):
        Reranker.from_pretrained(str(folder), pruning=0.5)


def test_packaging_pruned_weights_records_their_schedule(tmp_path, tokenizer, capsys):

    from peft import LoraConfig, get_peft_model

    from rerank import PruningConfig
    from rerank.models import recommended_pruning

    package = load_script("scripts/package_pruned_weights.py")
    root, run = tmp_path / "weights", tmp_path / "run"
    (root / "w").mkdir(parents=True)
    (root / "w" / "lazyrank.json").write_text(json.dumps({"reranker": {"scoring": "head"}}))
    (root / "w" / "README.md").write_text("# w\n")
    get_peft_model(make_tiny_llama(len(tokenizer)), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(run)
    argv = ["--run", str(run), "--name", "w", "--weights_root", str(root)]
    (run / "train_settings.json").write_text(json.dumps({"objective": "head", "head_pruning": None}))
    with pytest.raises(SystemExit):
        package.main(argv)
    assert "not trained with head_pruning" in capsys.readouterr().err
    settings = {"objective": "head", "head_pruning": "fast", "head_pruning_budget": "per_passage"}
    (run / "train_settings.json").write_text(json.dumps(settings))
    package.main(argv)
    package.main(argv)  # re-packaging replaces the card section instead of adding a second
    schedule, weights = recommended_pruning(root / "w")
    assert schedule == PruningConfig(**{**vars(PruningConfig.from_spec("fast")), "budget": "per_passage"})
    assert weights == root / "w" / "pruned" and (weights / "adapter_model.safetensors").is_file()
    assert json.loads((weights / "adapter_config.json").read_text())["base_model_name_or_path"] != str(run)
    assert (root / "w" / "README.md").read_text().count("## Pruned prefill") == 1
