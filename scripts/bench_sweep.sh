#!/usr/bin/env bash
# Wall time of one 6-job LeNet-300-100 sweep (short budgets, seeds 0-5) run two ways on this machine: Hydra's
# basic launcher (one job after another, THREADS torch threads each) against hydra/launcher=joblib with N_JOBS jobs
# at once (dns gives each cores / N_JOBS threads). Run it on a quiet machine.
#   DNS_DATA=../shared/data bash scripts/bench_sweep.sh            # THREADS=2 N_JOBS=2 OUT=outputs/bench_sweep
set -euo pipefail
threads=${THREADS:-2}
n_jobs=${N_JOBS:-2}
out=${OUT:-outputs/bench_sweep}
rm -rf "$out"
mkdir -p "$(dirname "$out")"
sweep=(-m model=lenet300 reference.iters=2000 surgery.iters=2000 finetune.iters=500 eval_every=1000
       checkpoint.every=0 seed=0,1,2,3,4,5)
start=$SECONDS
dns-train "${sweep[@]}" threads="$threads" hydra.sweep.dir="$out/basic" > "$out.basic.log" 2>&1
basic=$((SECONDS - start))
start=$SECONDS
dns-train "${sweep[@]}" hydra/launcher=joblib hydra.launcher.n_jobs="$n_jobs" hydra.sweep.dir="$out/joblib" \
    > "$out.joblib.log" 2>&1
joblib=$((SECONDS - start))
echo "basic launcher, one job at a time at $threads threads: ${basic} s"
echo "joblib, $n_jobs jobs at a time at $(python -c "import json;print(json.load(open('$out/joblib/0/report.json'))['config']['threads'])") thread(s) each: ${joblib} s"
python - "$out" <<'PY'
import json, sys
for kind in ("basic", "joblib"):
    errors = [json.load(open(f"{sys.argv[1]}/{kind}/{n}/report.json"))["test"]["final_error"] for n in range(6)]
    print(kind, "final errors (%):", " ".join(f"{100 * e:.2f}" for e in errors))
PY
