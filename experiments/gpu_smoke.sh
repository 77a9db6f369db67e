#!/usr/bin/env bash
# The laptop-gpu preset's code path (CUDA, fp16 via accelerate, 128x128 frames, 8x VAE) end to end at
# a reduced size, in a few minutes on one GPU: a 24-identity corpus, a short backbone pretraining with
# the preset's architecture, then experiments/run_benchmark.py --preset laptop-gpu (FedAvg and
# PrivFedTalk, 1 seed, ROUNDS rounds) on that backbone. Step times in the logs size the full preset.
#
#   bash experiments/gpu_smoke.sh OUT_DIR [ROUNDS]
#
# Each stage logs to OUT_DIR/<stage>.log; a failed stage stops the script with its exit status.
set -uo pipefail
OUT=${1:?usage: gpu_smoke.sh OUT_DIR [ROUNDS]}
ROUNDS=${2:-5}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/privfedtalk_gpu_smoke}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1

stage() {  # stage NAME TIMEOUT_S CMD...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "stage $name: rc=$rc, $((SECONDS - t0)) s"
    if [ $rc -ne 0 ]; then
        tail -n 25 "$OUT/$name.log" | tr '\r' '\n' | tail -n 25
        exit $rc
    fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stage synth 300 "$PY" -m privfedtalk.cli synth --out "$WORK/data" --identities 24 --clips 2 \
    --seconds 3 --size 128 --public-fraction 0.8333 --private-clips 6

# The laptop-gpu preset's pretraining keys, with fewer steps.
stage pretrain 300 "$PY" -m privfedtalk.cli pretrain pretrain \
    "data.root=$WORK/data" data.size=128 "out_dir=$WORK/pretrain" device=cuda mixed_precision=fp16 \
    "model.vae.block_out_channels=[32,64,128,128]" model.vae.steps=400 model.vae.batch_size=16 \
    "model.unet.block_out_channels=[128,256]" model.unet.steps=1000 model.unet.batch_windows=8 \
    model.identity_steps=200

stage benchmark 300 "$PY" experiments/run_benchmark.py --preset laptop-gpu --out "$WORK/results" \
    --checkpoint "$WORK/pretrain/checkpoint" --data "$WORK/data" --seeds 1 \
    --only fedavg privfedtalk "federated.rounds=$ROUNDS"

cp "$WORK/results/laptop-gpu/table.md" "$WORK/results/laptop-gpu/README.md" "$OUT/" 2>/dev/null
cp "$WORK/results/laptop-gpu/qualitative.png" "$OUT/" 2>/dev/null
grep -h '"round_seconds"' "$WORK"/results/laptop-gpu/runs/*/seed0/metrics.jsonl | head -n 2 >"$OUT/rounds.jsonl"
echo "gpu smoke done: $OUT"
