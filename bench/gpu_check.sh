#!/usr/bin/env bash
# The checks docs/gpu.md waits for, in one run on a machine with a CUDA GPU (about 12 minutes on
# one H100, most of it bench.gpu's budgets). Run from anywhere, as is:
#
#     bash bench/gpu_check.sh            # PY=.venv/bin/python and OUT=gpu-check by default
#
# 1. make bench-gpu, with budgets that fit a short GPU session: speed, data path, host share,
#    launches, peak memory and projected run times of fp32, bf16, fp16, and the loss against the
#    CPU;
# 2. Step 1 with engine.name=amp for 3 epochs on the demo data (made here if absent) under
#    torch.cuda.set_sync_debug_mode("warn"), counting the host's waits for the GPU a step
#    (python -m bench.sync);
# 3. a ddp_amp Step 1 (every visible GPU) killed with SIGKILL after its first checkpoint, then
#    finished with --resume, beside the same run uninterrupted: their last log rows.
# Everything it prints is also written under $OUT; the lines docs/gpu.md needs start with "==".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-check}
DEMO=(--config configs/demo.yml "runs.dir=$OUT/runs")
mkdir -p "$OUT"
[ -x "$PY" ] || make install
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/== GPU: /'
"$PY" -c "import torch; print('== torch', torch.__version__, 'CUDA', torch.version.cuda)"

echo "== 1. bench.gpu"
"$PY" -m bench.gpu --cpu-budget 150 --budget 300 --steps 20 2>&1 | tee "$OUT/bench-gpu.txt" || true

echo "== 2. Step 1, amp, 3 epochs on the demo data, under sync debug mode"
if [ ! -d demo/data/dev_data ]; then
    "$PY" -m asd.synthetic --config configs/demo.yml --n-source 40 --n-test 60 --workers "$(nproc)"
fi
"$PY" -m bench.sync "${DEMO[@]}" engine.name=amp stage1.epochs=3 2>&1 | tee "$OUT/sync.txt" \
    | grep -E "^(bench.sync|  |training|epoch)" || true

echo "== 3. ddp_amp killed after its first checkpoint, then resumed"
DDP=(engine.name=ddp_amp stage1.epochs=4 stage1.checkpoint_every=1)
"$PY" -m runners.stage1 "${DEMO[@]}" "${DDP[@]}" --no-progress \
    > "$OUT/ddp-reference.txt" 2> "$OUT/ddp-reference.err"
reference=$(tail -n 1 "$OUT/ddp-reference.txt")
before=$(ls -d "$OUT"/runs/*-stage1 | sort | tail -n 1)
setsid "$PY" -m runners.stage1 "${DEMO[@]}" "${DDP[@]}" --no-progress \
    > "$OUT/ddp-killed.txt" 2> "$OUT/ddp-killed.err" &
pid=$!
run=""
for _ in $(seq 600); do
    run=$(ls -d "$OUT"/runs/*-stage1 | sort | tail -n 1)
    [ "$run" != "$before" ] && [ -f "$run/checkpoints/last.pth" ] && break
    sleep 0.5
done
kill -KILL -- "-$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
echo "== killed $run with model.pth: $([ -f "$run/model.pth" ] && echo yes || echo no)"
"$PY" -m runners.stage1 --resume "$run" --no-progress \
    > "$OUT/ddp-resumed.txt" 2> "$OUT/ddp-resumed.err" \
    && echo "== resumed: $(tail -n 1 "$OUT/ddp-resumed.txt")" || echo "== resume FAILED"
echo "== first line: $(head -n 1 "$OUT/ddp-reference.txt")"
echo "== uninterrupted ($reference), last log row:"
tail -n 1 "$reference/logs/train.csv"
echo "== killed and resumed ($run), last log row:"
tail -n 1 "$run/logs/train.csv"
