#!/usr/bin/env bash
# One short GPU check of the emulator (issue 15), prepared for a machine with a CUDA GPU; ~5 minutes.
#   bash tests/benchmarks/gpu_check.sh [OUT_DIR]
# 1. `hil bench` on cuda at batch 1, 1024 and 65536 (re-probing the dtype table entry of this GPU),
#    chip MVMs/s next to a plain fp32 torch bmm of the same shape on the same GPU, in one run;
#    goal at large batch: >= 7.5 M full-chip MVMs/s (chip_vectors_per_s, HERMES: one per 133 ns).
# 2. The emulator's fast and slow fidelity tests with the chips on cuda (HIL_TEST_DEVICE=cuda).
# 3. Programming benchmark (program-and-verify, GDP) on one core and on the whole chip on cuda.
# Results go to OUT_DIR (default $OUT, else ./gpu-check); the exit code is that of the first failure.
set -u
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
status=0
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1 || true
export HIL_NUMERICS_TABLE="$out/numerics.json"   # a fresh table: probe this GPU, do not touch ~/.cache

timeout 240 hil bench --json --device cuda --probe --batches 1,1024,65536 --min-time 1.0 \
  > "$out/bench.json" 2> "$out/bench.err" || status=1
cat "$out/bench.json"

HIL_TEST_DEVICE=cuda timeout 300 python -m pytest -q -m "slow or not slow" \
  tests/emulator/test_fidelity.py tests/emulator/test_noise_sources.py tests/emulator/test_numerics.py \
  > "$out/fidelity.txt" 2>&1 || { [ "$status" = 0 ] && status=3; }
tail -3 "$out/fidelity.txt"

timeout 240 python -m tests.benchmarks.bench_protocols --json --device cuda --cores 1 64 \
  --methods program-verify gdp-scratch > "$out/protocols.json" 2> "$out/protocols.err" || { [ "$status" = 0 ] && status=4; }
cat "$out/protocols.json"
exit "$status"
