#!/usr/bin/env bash
# The checks a GPU machine runs, in under 8 minutes on one GPU:
#   1. the cuda lane (tests marked `cuda`: autocast training, resume, CPU/CUDA sampling
#      agreement, --device cuda:1, plan against the measured CUDA peak);
#   2. the real-size step of every shipped recipe on CUDA: one training step per stage at
#      batch 1 with random weights where pretrained ones are absent, and one sampling step,
#      each against the peak `tta-run RECIPE plan` estimated (bench/bench_real_size.py).
#
#   bash bench/gpu_check.sh            # from the repository root, after `make install`
#
# Prints the pytest summary and one line per recipe stage; exits non-zero when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check here')"
"$PY" -c "import torch; print(torch.cuda.get_device_name(0), torch.version.cuda, 'torch', torch.__version__)"

status=0
timeout 300 "$PY" -m pytest -q -m cuda -rs tests/test_cuda.py || status=$?
timeout 240 "$PY" bench/bench_real_size.py --device cuda || status=$?
exit $status
