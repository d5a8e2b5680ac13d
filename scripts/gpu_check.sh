#!/usr/bin/env bash
# The checks to run when a GPU is lent, in one go (about 5 minutes on an H200):
#   1. training throughput, dense against surgery, amp and channels_last off and on (scripts/bench_throughput.py);
#   2. the paper's LeNet recipes end to end on CUDA through dns-train, timed, with their reports.
#
#   DNS_DATA=../shared/data scripts/gpu_check.sh            # results in outputs/gpu_check/
#   OUT=dir DEVICE=cpu BENCH=0 EXTRA="reference.iters=20 surgery.iters=20 finetune.iters=20" scripts/gpu_check.sh
#
# It runs the package from this checkout (python3 -m / -c, no install needed): dns.conf must resolve, which an
# editable install or a link dns/conf -> ../conf provides.
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
DEVICE=${DEVICE:-cuda}
BENCH=${BENCH:-1}
EXTRA=${EXTRA:-}
RUNS=${RUNS:-$(mktemp -d)}
mkdir -p "$OUT" "$RUNS"
failed=0

python3 -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
if [ "$BENCH" = 1 ]; then
    python3 scripts/bench_throughput.py --device "$DEVICE" || failed=1
fi
# the paper recipes as they stand (BENCHMARKS.md's GPU section ran them when they shifted the images: now
# lenet5_shift lenet300_shift, whose CPU runs are in results/)
for experiment in paper_lenet5 paper_lenet300; do
    start=$SECONDS
    # shellcheck disable=SC2086  # EXTRA is a list of overrides
    python3 -c 'from dns.console import train; train()' experiment=$experiment device="$DEVICE" seed=0 \
        hydra.run.dir="$RUNS/$experiment" $EXTRA >"$RUNS/$experiment.out" 2>&1 || { failed=1; tail -5 "$RUNS/$experiment.out"; }
    echo "$experiment on $DEVICE: $((SECONDS - start)) s wall, dns-train included"
    for file in report.md train.log; do
        cp "$RUNS/$experiment/$file" "$OUT/$experiment.$file" 2>/dev/null
    done
    sed -n '1,40p' "$RUNS/$experiment/report.md" 2>/dev/null
done
exit $failed
