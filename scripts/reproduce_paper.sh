#!/usr/bin/env bash
# Run recipes with fixed seeds, each into RUNS/<recipe>, and write the tables of everything under RUNS into results/.
#   DNS_DATA=../shared/data bash scripts/reproduce_paper.sh [extra dns-train overrides...]
# Environment: RECIPES (default "paper_lenet300 paper_lenet5": the paper's setting; the shifted recipes:
# "lenet300_shift lenet5_shift", the _max ones: "paper_lenet300_max paper_lenet5_max"), SEEDS (default
# 0,1,...,9), RUNS (run directories, default outputs/reproduce; a recipe's own folder is emptied first, the others
# kept so that one table shows them side by side), RESULTS (tables, default results).
# On CPU the same seeds give the same tables on the same kind of processor and thread count.
set -euo pipefail
recipes=${RECIPES:-paper_lenet300 paper_lenet5}
seeds=${SEEDS:-0,1,2,3,4,5,6,7,8,9}
runs=${RUNS:-outputs/reproduce}
results=${RESULTS:-results}
for recipe in $recipes; do
  rm -rf "${runs:?}/$recipe"
  dns-train -m "experiment=$recipe" "seed=$seeds" "hydra.sweep.dir=$runs/$recipe" "$@"
done
echo "tables of: $(cd "$runs" && echo */)" >&2  # the folders kept from earlier runs too
dns-report "$runs" --out "$results"
