#!/usr/bin/env bash
# The long runs of benchmarks/long_runs.py all at once on one GPU machine (the device tool), then packed for the trip
# back. Run from the repository root, with the data set as a tar in .gpu/ and runs/long/budget.json carried along:
#   bash benchmarks/gpu_long_runs.sh MINUTES [RUN ...]     (default: every run)
# Each run stops at MINUTES of training with a checkpoint (long_runs.py pretrain RUN resumes it anywhere).
set -u
minutes=${1:?minutes}; shift
mkdir -p ../shared/data && tar xf .gpu/cifar10-dev.tar -C ../shared/data
export PYTHONPATH=$PWD/src
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
if [ $# -gt 0 ]; then runs="$*"; else runs="--all"; fi
python3 benchmarks/long_runs.py parallel $runs --workers 2 --max-minutes "$minutes"
for f in runs/long/*.log; do echo "== $f"; tail -n 3 "$f"; done
python3 benchmarks/long_runs.py pack --dest "${OUT:-/tmp/out}"
