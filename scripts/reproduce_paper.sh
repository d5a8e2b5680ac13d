#!/usr/bin/env bash
# Run the paper recipes (LeNet-300-100, LeNet-5) with fixed seeds and write the tables into results/.
#   DNS_DATA=../shared/data bash scripts/reproduce_paper.sh [extra dns-train overrides...]
# Environment: RECIPES (default "paper_lenet300 paper_lenet5"; the _max recipes: "paper_lenet300_max
# paper_lenet5_max"), SEEDS (default 0,1,2), RUNS (run directories, default outputs/reproduce; emptied
# first), RESULTS (tables, default results). On CPU the same seeds give the same tables on the same kind of processor.
set -euo pipefail
recipes=${RECIPES:-paper_lenet300 paper_lenet5}
seeds=${SEEDS:-0,1,2}
runs=${RUNS:-outputs/reproduce}
results=${RESULTS:-results}
rm -rf "$runs"
for recipe in $recipes; do
  dns-train -m "experiment=$recipe" "seed=$seeds" "hydra.sweep.dir=$runs/$recipe" "$@"
done
dns-report "$runs" --out "$results"
