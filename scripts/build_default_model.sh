#!/usr/bin/env bash
# Rebuild the shipped default reranker (rerank/weights/smollm2-135m-head) from ../shared/data.
#
#   MAX_TRAIN_MINUTES=75 nohup bash scripts/build_default_model.sh > runs/build.log 2>&1 &
#
# 1. labels with teacher scores from every offline training source (about 10 min on 2 cores),
# 2. head training in the two segments the shipped weights went through (configs/train/head-cpu.yaml):
#    steps 1-301 on a 450-step linear schedule, then steps 302-500 with the schedule spread over 900
#    steps (--stop_at_step ends each segment where the shipped run ended). Every call resumes from the
#    newest checkpoint; with MAX_TRAIN_MINUTES a segment may stop early: run the script again.
# 3. the fusion weight on Vaswani, 4. the quality table on DL19 / SciFact (skip with QUALITY=0),
# 5. packaging + model card (lazyrank.json: scoring head, the fusion weight).
# On a GPU the same segments take minutes (add --bf16 true through EXTRA_TRAIN_ARGS).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/head}
QUALITY=${QUALITY:-1}
[ -f "$OUT/train.jsonl" ] || $PY eval/build_training_lists.py --out "$OUT/train.jsonl"

last_step() {  # newest checkpoint step in $OUT/model (0 if none)
  local newest
  newest=$(ls -d "$OUT"/model/checkpoint-* 2>/dev/null | sed 's/.*checkpoint-//' | sort -n | tail -1)
  echo "${newest:-0}"
}
segment() {  # MAX_STEPS STOP_AT [more train args]
  local max_steps=$1 stop_at=$2
  shift 2
  if [ "$(last_step)" -ge "$stop_at" ]; then return 0; fi
  $PY -m rerank.train configs/train/head-cpu.yaml --train_file "$OUT/train.jsonl" --output_dir "$OUT/model" \
      --max_steps "$max_steps" --stop_at_step "$stop_at" --save_steps 100 --resume_from_checkpoint auto \
      ${MAX_TRAIN_MINUTES:+--max_train_minutes "$MAX_TRAIN_MINUTES"} ${EXTRA_TRAIN_ARGS:-} "$@"
  if [ "$(last_step)" -lt "$stop_at" ]; then
    echo "training stopped at step $(last_step) before $stop_at (time limit): run the script again to continue" >&2
    exit 3
  fi
}
segment 450 301
segment 900 500 --eval_strategy no

# The first-stage fusion weight is chosen on Vaswani (neither training nor evaluation data).
$PY eval/fusion_dev.py --model "$OUT/model" --work_dir "$OUT/fusion" --out "$OUT/fusion.json"
PACKAGE_ARGS=(--fusion "$OUT/fusion.json"
  --history "Steps 1-301: configs/train/head-cpu.yaml, linear LR 4e-4 over 450 steps (20 warm-up), stopped at step 301."
  --history "Steps 302-500: resumed from checkpoint-301 with the schedule spread over 900 steps (LR 2.7e-4 at step 302 falling to 1.8e-4 at step 500), stopped at step 500.")
if [ "$QUALITY" = "1" ]; then
  PACKAGE_ARGS+=(--quality "$OUT/quality.json")
  $PY eval/quality_table.py --out "$OUT/quality.json" --work_dir "$OUT/quality" --depths 20 \
      --system bm25 --system minilm --system "trained=$OUT/model:head"
fi
$PY eval/package_weights.py --run "$OUT/model" "${PACKAGE_ARGS[@]}"
