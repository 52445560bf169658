#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one command (CI never has one):
#   1. the CUDA-gated tests (pytest -m cuda): pinned fast-path batches and CUDA/CPU parity,
#      fit under torch.cuda.set_sync_debug_mode("error") between logging points, metric
#      updates without syncs, fp16 with a GradScaler, a CUDA checkpoint loaded without CUDA;
#   2. the rest of the suite with a GPU present (device=None then means CUDA);
#   3. benchmarks/overhead.py on the GPU workload (ResNet-18, 3x32x32, batch 256, bf16),
#      which also runs the sync-debug check on it.
#
#   benchmarks/gpu_check.sh [OUT_DIR]          (default benchmarks/results)
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh
#
# PYTHON must import torch built with CUDA and torchfit's dependencies; torchfit itself is
# taken from this checkout. Logs and results land in OUT_DIR; the exit status is non-zero
# when any step failed. On a machine without a GPU it stops at once and says so.
set -u
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TORCH_FORCE_WEIGHTS_ONLY_LOAD=1

"$py" - <<'EOF' 2>&1 | tee "$out/gpu-machine.txt"
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available to this Python (torch %s); run it on a GPU machine" % torch.__version__)
print("torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name(),
      "bf16" if torch.cuda.is_bf16_supported() else "no bf16")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 2

status=0
step() {  # step NAME COMMAND...: run, log to OUT_DIR/gpu-NAME.log, remember a failure
    local name=$1; shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/gpu-$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

step cuda-tests "$py" -m pytest -q -p no:cacheprovider -m cuda -rs tests
# The notebooks need a Jupyter kernel, which GPU images often lack; CI runs them.
step suite "$py" -m pytest -q -p no:cacheprovider -m "not cuda" -x --ignore=tests/test_notebooks.py tests
step bench "$py" benchmarks/overhead.py --workloads GPU --no-memory --out "$out"
exit $status
