#!/usr/bin/env bash
# Import the DNS authors' four released LeNets and evaluate them on the MNIST test set.
#   DNS_DATA=../shared/data bash scripts/caffe_models.sh [OUT_DIR]
# Writes OUT_DIR/<model>_<variant>.pt (dns checkpoints) and prints each one's dns-eval table.
set -euo pipefail
data=${DNS_DATA:?set DNS_DATA to the folder holding MNIST/raw and dns-caffe/}
out=${1:-outputs/caffe}
mkdir -p "$out"
for pair in lenet5:lenet5 lenet300:lenet300100; do
  model=${pair%%:*}; folder=${pair##*:}
  for variant in original sparse; do
    dns-import-caffe "$data/dns-caffe/$folder/caffe_${folder}_${variant}.caffemodel" --model "$model" \
      --out "$out/${model}_${variant}.pt" > /dev/null
    echo "## ${model} ${variant} (caffe_${folder}_${variant}.caffemodel)"
    dns-eval "$out/${model}_${variant}.pt"
    echo
  done
done
