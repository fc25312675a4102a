#!/usr/bin/env bash
# Every GPU figure of the throughput issue (15) in one run, about 10 minutes on one H200 with 16 CPU cores:
#   train-densenet121.txt, train-resnet50.txt  bench_train.py: the network alone vs. the whole training step
#                                              fed from DICOM (cold cache, cached), bf16 + channels_last
#   loader.txt                                 bench_loader.py: the cold loader with 1 2 4 8 14 workers
#   detect.txt                                 bench_detect.py --device cuda --untrained: seconds per demo MRI
#                                              volume and the stage split (bf16 autocast, channels_last)
#   env.txt, summary.txt                       nvidia-smi, versions, disk; each step's exit status and time
# Each step runs under `timeout` and the next one runs whatever the previous one did. Output goes to $OUT
# (default ./gpu-figures): at most 6 files, so that a remote runner can bring them all back.
#
# Usage:
#   benchmarks/gpu_figures.sh             # on the GPU machine, from anywhere in the checkout
#   benchmarks/gpu_figures.sh --dry-run   # the same steps with tiny sizes on the CPU (checks the script)
#
# Python: $PYTHON if set; .venv/bin/python when it is there (make install); else a python3 that already has torch, MONAI
# and torchvision (the checkout on PYTHONPATH); else `make install` is tried (it needs the network).
set -u

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
OUT=${OUT:-./gpu-figures}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d -t gpu-figures.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
: >"$OUT/summary.txt"

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, medvision" 2>/dev/null; then
    PY=$ROOT/.venv/bin/python
elif python3 -c "import torch, torchvision, monai" 2>/dev/null; then
    PY=$(command -v python3)
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no Python with torch here: trying make install (needs the network)" | tee -a "$OUT/summary.txt"
    timeout 600 make install >"$WORK/install.log" 2>&1 || tail -20 "$WORK/install.log" | tee -a "$OUT/summary.txt"
    PY=$ROOT/.venv/bin/python
fi

# step NAME SECONDS COMMAND...: run COMMAND under timeout, its output appended to $OUT/NAME.txt and shown.
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS rc
    echo "=== $name: $*" | tee -a "$OUT/$name.txt"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
    rc=${PIPESTATUS[0]}
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then rc="$rc (timed out after ${limit}s)"; fi
    echo "$name: exit $rc, $((SECONDS - start)) s: $*" | tee -a "$OUT/summary.txt"
}

{
    date -u
    nvidia-smi || echo "nvidia-smi: not available"
    echo "python: $PY"
    "$PY" -c "import torch, torchvision, monai, medvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| monai', monai.__version__, '| medvision', medvision.__version__); print('cuda available:', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    echo "cpu cores: $(nproc)"
    df -h "$WORK" "$ROOT" 2>/dev/null
    git -C "$ROOT" log -1 --oneline 2>/dev/null
    git -C "$ROOT" status --short 2>/dev/null | head -20
} 2>&1 | tee "$OUT/env.txt"

export TMPDIR=$WORK # bench_train writes batch x steps radiographs (10 MB each) into a temporary folder
if [ "$DRY" = 1 ]; then
    train_args=(--device cpu --batch-size 2 --steps 1 --rows 256 --cols 256 --unique 2 --workers 0)
    step train-densenet121 600 "$PY" benchmarks/bench_train.py --backbone densenet121 "${train_args[@]}"
    step train-resnet50 600 "$PY" benchmarks/bench_train.py --backbone resnet50 "${train_args[@]}"
    step loader 300 "$PY" benchmarks/bench_loader.py --images 8 --unique 2 --batch-size 2 --workers 1 2
    mri=(--cxr-patients 4 --mri-volumes 2 --mri-dicom 0)
    detect=(--device cpu --volumes 1)
else
    # The README's commands (3072 radiographs 2048x2500, 14 loader workers, batch 128).
    train_args=(--device cuda --batch-size 128 --steps 24 --workers 14)
    step train-densenet121 200 "$PY" benchmarks/bench_train.py --backbone densenet121 "${train_args[@]}"
    step train-resnet50 200 "$PY" benchmarks/bench_train.py --backbone resnet50 "${train_args[@]}"
    step loader 180 "$PY" benchmarks/bench_loader.py --images 896 --batch-size 16 --workers 1 2 4 8 14
    mri=(--cxr-patients 4 --mri-volumes 9 --mri-dicom 0)
    detect=(--device cuda --volumes 8)
fi
# Demo MRI volumes only (the chest radiographs are not used here), then the detector on them.
step detect 120 "$PY" -m medvision.cli demo-data --out "$WORK/demo" --seed 0 "${mri[@]}"
step detect 180 "$PY" benchmarks/bench_detect.py --untrained --data "$WORK/demo/mri" "${detect[@]}"

echo "figures in $OUT:" && ls -l "$OUT"
cat "$OUT/summary.txt"
