#!/usr/bin/env bash
# The one script a lent GPU machine runs (bench/RESULTS.md, "GPU"): at most 8 minutes in all,
# each step under its own timeout so one slow part cannot eat the others' time.
#
#   bash bench/gpu.sh                 # writes bench/out/gpu/*.txt (or $OUT/*.txt)
#
# Steps: every family's training throughput at 128 px, paper scale, fp32 and bf16 (StyleGAN2 at
# the reference configuration: s/kimg); DCGAN-128 against seed 004's loop; Inception throughput
# and FID equality with pytorch-fid; generate + PNG encoding of 10,000 images.
# torch.compile is not measured: the pipeline has no compile switch yet (R1/R2/path length need
# a double backward, which compile cannot trace; the other steps could be).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p "$OUT"
run() {  # run NAME SECONDS COMMAND...: output to $OUT/NAME.txt, a timeout is reported, not fatal
  local name=$1 seconds=$2; shift 2
  echo "== $name (limit ${seconds}s)"
  timeout "$seconds" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "!! $name ended with exit code $rc" | tee -a "$OUT/$name.txt"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | grep "Model name"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
run families 240 "$PY" bench/bench_families.py --size 128 --paper --device cuda \
    --steps 40 --warmup 10 --group 5
run train 90 "$PY" bench/bench_train.py --device cuda --steps 40 --warmup 5
run fid 75 "$PY" bench/bench_fid.py --n 2000 --device cuda
run generate 60 "$PY" bench/bench_generate.py --n 10000 --device cuda --out "$OUT/generate"
echo "== done: $OUT"
