#!/usr/bin/env bash
# Kill a real run with SIGKILL at random moments N times, resume each, and check that every one ends
# identical to the uninterrupted run (final weights and masks bitwise, report numbers, history.csv).
#   DNS_DATA=../shared/data bash scripts/fault_test.sh [N=10] [dns-train overrides...]
set -euo pipefail
N=${1:-10}
shift || true
ARGS=(model=lenet300 reference.iters=1000 surgery.iters=3000 finetune.iters=500 surgery.c=2
      checkpoint.every=200 eval_every=500 "$@")
WORK=outputs/fault_test/$(date +%Y-%m-%d_%H-%M-%S)
mkdir -p "$WORK"
echo "fault test: $N kills, runs in $WORK, dns-train ${ARGS[*]}"

start=$(date +%s.%N)
dns-train "${ARGS[@]}" hydra.run.dir="$WORK/straight" > "$WORK/straight.log" 2>&1
duration=$(python -c "print($(date +%s.%N) - $start)")
echo "uninterrupted run: ${duration%.*} s"

failures=0
for i in $(seq 1 "$N"); do
  run="$WORK/killed_$i"
  at=$(python -c "import random; print(round(random.uniform(1, $duration), 2))")
  dns-train "${ARGS[@]}" hydra.run.dir="$run" > "$run.log" 2>&1 &
  pid=$!
  sleep "$at"
  kill -KILL "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
  if [ -d "$run" ]; then
    where=$(python -c "
import torch, pathlib
p = pathlib.Path('$run/checkpoints/latest.pt')
r = torch.load(p, weights_only=True)['resume'] if p.exists() else None
print('before the first checkpoint' if r is None else f\"last checkpoint: {r['stage']} iteration {r['iteration']}\")")
    dns-train "${ARGS[@]}" hydra.run.dir="$run" resume=true >> "$run.log" 2>&1 || true  # compare_runs judges
  else  # killed while starting, before its run directory existed: nothing to resume, start it again
    where="before its run directory existed, started again"
    dns-train "${ARGS[@]}" hydra.run.dir="$run" >> "$run.log" 2>&1 || true
  fi
  if verdict=$(python scripts/compare_runs.py "$WORK/straight" "$run"); then :; else failures=$((failures + 1)); fi
  echo "kill $i at ${at} s ($where), resumed: $verdict"
done
echo "$((N - failures)) of $N killed-and-resumed runs identical to the uninterrupted run"
[ "$failures" -eq 0 ]
