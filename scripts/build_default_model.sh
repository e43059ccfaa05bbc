#!/usr/bin/env bash
# Rebuild the shipped default reranker (rerank/weights/smollm2-135m-head) from ../shared/data.
#
#   MAX_TRAIN_MINUTES=75 nohup bash scripts/build_default_model.sh > runs/build.log 2>&1 &
#
# 1. labels with teacher scores from every offline training source (about 10 min on 2 cores),
# 2. head training, stopped after MAX_TRAIN_MINUTES (checkpoints every 100 steps; rerun with
#    RESUME=1 after a kill to continue from the last one),
# 3. the fusion weight on Vaswani, 4. the quality table on DL19 / SciFact (skip with QUALITY=0),
# 5. packaging + model card (lazyrank.json: scoring head, the fusion weight).
# On a GPU the same config trains the whole schedule in minutes (add --bf16 true).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-runs/head}
MAX_TRAIN_MINUTES=${MAX_TRAIN_MINUTES:-75}
QUALITY=${QUALITY:-1}
[ -f "$OUT/train.jsonl" ] || $PY eval/build_training_lists.py --out "$OUT/train.jsonl"
RESUME_ARGS=()
[ "${RESUME:-0}" = "1" ] && RESUME_ARGS=(--resume_from_checkpoint auto)
$PY -m rerank.train configs/train/head-cpu.yaml --train_file "$OUT/train.jsonl" --output_dir "$OUT/model" \
    --max_train_minutes "$MAX_TRAIN_MINUTES" "${RESUME_ARGS[@]}"
# The first-stage fusion weight is chosen on Vaswani (neither training nor evaluation data).
$PY eval/fusion_dev.py --model "$OUT/model" --work_dir "$OUT/fusion" --out "$OUT/fusion.json"
PACKAGE_ARGS=(--fusion "$OUT/fusion.json")
if [ "$QUALITY" = "1" ]; then
  PACKAGE_ARGS+=(--quality "$OUT/quality.json")
  $PY eval/quality_table.py --out "$OUT/quality.json" --work_dir "$OUT/quality" --depths 20 \
      --system bm25 --system minilm --system "trained=$OUT/model:head"
fi
$PY eval/package_weights.py --run "$OUT/model" "${PACKAGE_ARGS[@]}"
