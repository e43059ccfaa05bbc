#!/usr/bin/env bash
# Rebuild the shipped default reranker (rerank/weights/smollm2-135m-head) from ../shared/data.
#
#   MAX_TRAIN_MINUTES=75 nohup bash scripts/build_default_model.sh > runs/build.log 2>&1 &
#
# 1. labels with teacher scores from every offline training source (about 10 min on 2 cores each):
#    MiniLM-ordered labels (train.jsonl) and ensemble labels (train-ensemble.jsonl: MiniLM + BM25,
#    judged passages' soft scores lifted, SciFact train claims at BM25 top-20) and long-list labels
#    (train-long.jsonl: SciFact train claims at BM25 top-100 cut into prompts of 20, with grades),
# 2. head training in the four segments the shipped weights went through (configs/train/head-cpu.yaml):
#    steps 1-301 on a 450-step linear schedule (runs/head/model), then a second run of 200 steps that
#    starts from that adapter (--init_adapter, fresh optimizer) with LR 2.7e-4 decaying over 600 steps
#    and a new data order (runs/head/model2), then a third run of 200 steps from that one on the
#    ensemble labels, LR 2e-4 linear over 200 steps (runs/head/model3), then 261 steps on the long lists
#    with the pointwise term (configs/train/head-long-cpu.yaml, runs/head/model4). --stop_at_step ends each
#    segment where the shipped run ended. Every call resumes from the newest checkpoint; with
#    MAX_TRAIN_MINUTES a segment may stop early: run the script again.
# 3. the fusion weight on Vaswani, 4. the quality table on DL19 / SciFact (skip with QUALITY=0),
# 5. packaging + model card (lazyrank.json: scoring head, fusion off, long lists by a tournament over
#    interleaved chunks: the method eval/depth_methods.py chose, docs/benchmarks.md#depth),
# 6. the head calibration, fitted on the raw interleaved chunk readouts of the first 40 Vaswani queries
#    at top-100 (the layout the default reads long lists in), then the final-prompt and single-prompt
#    sets on all 93.
# On a GPU the same segments take minutes (add --bf16 true through EXTRA_TRAIN_ARGS).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/head}
QUALITY=${QUALITY:-1}
[ -f "$OUT/train.jsonl" ] || $PY scripts/build_training_lists.py --out "$OUT/train.jsonl"
[ -f "$OUT/train-ensemble.jsonl" ] || $PY scripts/build_training_lists.py --out "$OUT/train-ensemble.jsonl" \
    --teacher ensemble --judged_boost 0.1 --scifact_depth 20
[ -f "$OUT/train-long.jsonl" ] || $PY scripts/build_training_lists.py --out "$OUT/train-long.jsonl" \
    --sources scifact,msmarco --scifact_depth 100 --scifact_claims 240 --chunk_size 20 --teacher ensemble --judged_boost 0.1

last_step() {  # DIR: newest checkpoint step in DIR (0 if none)
  local newest
  newest=$(ls -d "$1"/checkpoint-* 2>/dev/null | sed 's/.*checkpoint-//' | sort -n | tail -1)
  echo "${newest:-0}"
}
segment() {  # DIR MAX_STEPS STOP_AT [more train args]
  local dir=$1 max_steps=$2 stop_at=$3
  shift 3
  if [ "$(last_step "$dir")" -ge "$stop_at" ]; then return 0; fi
  $PY -m rerank.training.train configs/train/head-cpu.yaml --train_file "$OUT/train.jsonl" --output_dir "$dir" \
      --max_steps "$max_steps" --stop_at_step "$stop_at" --save_steps 50 --resume_from_checkpoint auto \
      ${MAX_TRAIN_MINUTES:+--max_train_minutes "$MAX_TRAIN_MINUTES"} ${EXTRA_TRAIN_ARGS:-} "$@"
  if [ "$(last_step "$dir")" -lt "$stop_at" ]; then
    echo "training stopped at step $(last_step "$dir") of $stop_at in $dir (time limit): run the script again to continue" >&2
    exit 3
  fi
}
segment "$OUT/model" 450 301
segment "$OUT/model2" 600 200 --init_adapter "$OUT/model" --learning_rate 2.7e-4 --warmup_steps 10 --data_seed 1 --eval_strategy no
segment "$OUT/model3" 200 200 --train_file "$OUT/train-ensemble.jsonl" --init_adapter "$OUT/model2" \
    --max_seq_length 2600 --learning_rate 2.0e-4 --warmup_steps 10 --data_seed 2 --eval_strategy no
# the fourth: long lists cut into prompts of 20, with the pointwise term (configs/train/head-long-cpu.yaml)
segment4() {
  if [ "$(last_step "$OUT/model4")" -ge 261 ]; then return 0; fi
  $PY -m rerank.training.train configs/train/head-long-cpu.yaml --train_file "$OUT/train-long.jsonl" \
      --output_dir "$OUT/model4" --init_adapter "$OUT/model3" --stop_at_step 261 --resume_from_checkpoint auto \
      ${MAX_TRAIN_MINUTES:+--max_train_minutes "$MAX_TRAIN_MINUTES"} ${EXTRA_TRAIN_ARGS:-}
  if [ "$(last_step "$OUT/model4")" -lt 261 ]; then
    echo "training stopped at step $(last_step "$OUT/model4") of 261 (time limit): run the script again to continue" >&2
    exit 3
  fi
}
segment4
MODEL="$OUT/model4"

# The first-stage fusion weight is chosen on Vaswani (neither training nor evaluation data).
$PY scripts/fusion_dev.py --model "$MODEL" --work_dir "$OUT/fusion" --out "$OUT/fusion.json"
PACKAGE_ARGS=(--fusion "$OUT/fusion.json" --setting first_stage_weight=0.0 --setting 'long_list="tournament"'
  --setting 'chunk_layout="interleaved"'
  --setting 'chunk_pruning={"layer_fractions": [0.67], "keep_ratios": [0.3], "pruned_tokens": "freeze", "allow_unsupported_fallback": true}'
  --labels default --labels "$OUT/train-ensemble.summary.json" --labels "$OUT/train-long.summary.json"
  --history "Steps 1-301: configs/train/head-cpu.yaml, linear LR 4e-4 over 450 steps (20 warm-up), stopped at step 301."
  --history "Steps 302-501: a second run from the step-301 adapter (--init_adapter, fresh AdamW state, a new data order: --data_seed 1; the held-out split stays on seed 42), LR 2.7e-4 after 10 warm-up steps decaying linearly over 600 steps, stopped at its step 200 (LR 1.8e-4)."
  --history "Steps 502-701: a third run from the step-501 adapter on the ensemble labels (train-ensemble.jsonl: MiniLM + BM25 order, judged soft scores lifted by 0.1 x grade, SciFact train claims at top-20), LR 2e-4 after 10 warm-up steps decaying linearly over 200 steps, --max_seq_length 2600, --data_seed 2."
  --history "Steps 702-962: a fourth run from the step-701 adapter on long lists (train-long.jsonl: 240 SciFact train claims at BM25 top-100 cut into prompts of 20, and 100 MS MARCO triples) with the pointwise term (head_pointwise_weight 10), configs/train/head-long-cpu.yaml: LR 2e-4 after 10 warm-up steps decaying linearly over 500 steps, batch 1, stopped by its 50-minute limit at step 261.")
if [ "$QUALITY" = "1" ]; then
  PACKAGE_ARGS+=(--quality "$OUT/quality.json")
  $PY eval/quality_table.py --out "$OUT/quality.json" --work_dir "$OUT/quality" --depths 20 \
      --system bm25 --system minilm --system "trained=$MODEL:head"
fi
$PY scripts/package_weights.py --run "$MODEL" "${PACKAGE_ARGS[@]}"

# The calibration belongs to the packaged weights (tied by sha256): fit it on Vaswani's raw readouts,
# read in the interleaved chunks the default ranks long lists with.
$PY eval/depth_methods.py --collection vaswani --depths 100 --methods chunks@interleaved --limit_queries 40 \
    --work_dir "$OUT/depth" --out "$OUT/depth.json"
$PY scripts/fit_calibration.py --collection ../shared/data/vaswani \
    --records "$OUT/depth/vaswani/100-chunks-interleaved.jsonl" --layout interleaved \
    --weights rerank/weights/smollm2-135m-head
# Then one set each for the tournament's final prompt and for a list that fits one prompt: their
# passages were chosen otherwise than a chunk's (every prompt the default reads, all 93 queries).
for depth in 100 20; do
  $PY eval/prompt_readouts.py --collection vaswani --depth $depth --work_dir "$OUT/depth"
done
$PY scripts/fit_calibration.py --collection ../shared/data/vaswani --kind final \
    --records "$OUT/depth/vaswani/100-prompts.jsonl" --weights rerank/weights/smollm2-135m-head
$PY scripts/fit_calibration.py --collection ../shared/data/vaswani --kind single \
    --records "$OUT/depth/vaswani/20-prompts.jsonl" --weights rerank/weights/smollm2-135m-head
