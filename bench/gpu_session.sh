#!/usr/bin/env bash
# The prepared GPU check (one call on a lent GPU machine): the latency figures of issue 4, every φ estimator's step
# time and variance on CUDA (issue 8) and a short real search on CUDA. Python packages the machine lacks travel as
# wheels in .whl/.
# Usage: OUT=gpu_out bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/device.txt"
timeout 240 python3 bench/latency_gpu.py --json "$OUT/latency_gpu.json" 2>&1 | tee "$OUT/latency_gpu.log"
# Every φ estimator side by side (issue 8): batch 64/128/256, fp32 and bf16 autocast.
for batch in 64 128 256; do
  for amp in "" --amp; do
    timeout 150 python3 bench/search_step.py --device cuda --batch $batch --repeats 5 $amp 2>&1 \
      | tee "$OUT/search_step_b${batch}${amp:+_amp}.log"
  done
done
timeout 90 python3 search.py --device cuda --epochs 2 --warmup-epochs 1 --output /tmp/search_cuda 2>&1 \
  | tail -n 15 | tee "$OUT/search_cuda.log"
