#!/usr/bin/env bash
# The throughput issue's GPU figures in one short run (about 10 minutes on a 16-core H200 machine).
#
# Run from the repository root with the project's .venv carried over (the device machine has no network):
#     bash benchmarks/gpu_figures.sh            # results under $OUT (default ./gpu-figures)
#     bash benchmarks/gpu_figures.sh --dry-run  # print the steps only
# Each step has its own timeout and a failed step does not stop the others; every output is tee'd to $OUT.
set -u
OUT="${OUT:-./gpu-figures}"
PY="${PYTHON:-.venv/bin/python}"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"

step() {  # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name ($limit s): $*" | tee -a "$OUT/steps.log"
    [ "$DRY" = 1 ] && return 0
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/steps.log"
    tail -n 12 "$OUT/$name.txt"
}

step nvidia-smi 20 nvidia-smi
step versions 60 "$PY" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# 1. Cold cache: the loader alone per worker count (no network), against the fast path on one core.
step loader 150 "$PY" benchmarks/bench_loader.py --images 448 --unique 16 --workers 1 2 4 8 14
# 1-2. The first epoch (cold cache) and the cached epochs against the network alone: float16 cache entries,
#      normalisation on the device, bf16 + channels_last, 14 workers.
step train-densenet121 180 "$PY" benchmarks/bench_train.py --backbone densenet121 --batch-size 128 --steps 24 --workers 14 --device cuda
step train-resnet50 150 "$PY" benchmarks/bench_train.py --backbone resnet50 --batch-size 128 --steps 24 --workers 14 --device cuda
# 4. The detector on CUDA: seconds per demo volume and the stage split.
if [ ! -d data/demo/mri ]; then
    step demo-data 120 .venv/bin/medvision demo-data --out data/demo
fi
step detect 90 "$PY" benchmarks/bench_detect.py --device cuda --untrained --volumes 6
echo "figures in $OUT"
