#!/usr/bin/env bash
# The single-pass training ablation on one GPU, in one budgeted run (about 9 minutes on an H100):
#   1. LoRA-train the default model twice on the same labels: LM loss only (importance-aware) and
#      joint (importance-aware LM loss + RankNet on the single-pass identifier scores);
#   2. the quality matrix (eval/ablation_single_pass.py): both models x top-20/100/50 x
#      generate / single_pass, dense and pruned, plus sliding windows, all 43 DL19 queries;
#   3. the pruned-prefill TTFT benchmark at 7B/8B shapes (eval/bench_pruning_gpu.py).
# Every stage has a time budget (TRAIN_MIN, ABLATION_MIN, PRUNE_BENCH_S) and writes into OUT, so
# a cut run still leaves everything finished so far; a rerun skips trained models and resumes the
# matrix.
#
#   python scripts/build_training_mix.py --out runs/mix/mix.embed.jsonl      # labels (CPU, 2 minutes)
#   bash eval/gpu_train_ablation.sh runs/gpu runs/mix/mix.embed.jsonl
set -u -o pipefail
OUT=${1:-runs/gpu}
LABELS=${2:-runs/mix/mix.embed.jsonl}
PY=${PYTHON:-python3}
TRAIN_MIN=${TRAIN_MIN:-1.5}
ABLATION_MIN=${ABLATION_MIN:-3.5}
PRUNE_BENCH_S=${PRUNE_BENCH_S:-75}
# COLLECTION (default ../shared/data/msmarco-dl19), DEVICE (default cuda), TRAIN_ARGS (extra rerank.training.train overrides), EXTRA_MODELS (NAME=PATH ...) adjust it.
mkdir -p "$OUT"
stamp() { echo "[$(date +%T)] $*"; }

stamp "model"
$PY -m rerank.models || exit 1
$PY - <<'EOF'
import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
                    torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

for name in lm joint; do
    extra=()
    [ "$name" = joint ] && extra=(--objective identifier_ranking --ranking_loss ranknet)
    if [ ! -f "$OUT/$name/adapter_model.safetensors" ]; then
        stamp "train $name"
        $PY -m rerank.training.train configs/train/smollm-gpu.yaml --train_file "$LABELS" --output_dir "$OUT/$name" \
            --max_train_minutes "$TRAIN_MIN" "${extra[@]}" ${TRAIN_ARGS:-} > "$OUT/train_$name.log" 2>&1
        echo "rc=$?"; grep -E "'loss'|train_runtime|max_train_minutes|Error|error" "$OUT/train_$name.log" | tail -n 8
    fi
done

models=()
for name in lm joint; do
    [ -f "$OUT/$name/adapter_model.safetensors" ] && models+=("$name=$OUT/$name")
done
for extra_model in ${EXTRA_MODELS:-}; do models+=("$extra_model"); done
stamp "ablation: ${models[*]:-no model trained}"
[ ${#models[@]} -gt 0 ] && $PY eval/ablation_single_pass.py --models "${models[@]}" \
    --collection "${COLLECTION:-../shared/data/msmarco-dl19}" --groups 20 100 50 --budgets 100 60 100 \
    --device "${DEVICE:-cuda}" --dtype float32 --batch_size 16 --deadline_minutes "$ABLATION_MIN" \
    --variants generate single_pass single_pass+prune generate+prune sliding \
    --schedules "mid=0.05:0.3,0.25:0.1,0.5:0.04" "fast=fast" \
    --output "$OUT/ablation_gpu.json" 2>&1 | grep -v "it/s\]" | tail -n 40

stamp "pruning TTFT"
timeout "$PRUNE_BENCH_S" $PY eval/bench_pruning_gpu.py --tokens 8192 16384 32768 --repeats 3 \
    --output "$OUT/pruning_gpu.json" 2>&1 | tail -n 15
stamp "done"
