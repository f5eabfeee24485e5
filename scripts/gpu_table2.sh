#!/usr/bin/env bash
# Table 2 / Figure 3 on a machine with a CUDA GPU, as one prepared script (issue 11).
# Nothing requires a GPU: CI and the CPU benchmarks never run this. It
#   1. checks that CUDA training matches the CPU (tests/core/test_device.py),
#   2. runs `benchmarks.fedmeta_femnist --device cuda` for the five methods and three seeds
#      up to ROUNDS rounds, at most MINUTES of wall time per run per sitting; each run
#      resumes from its checkpoint, so the script can be called again until all are done,
#   3. copies the result files to $OUT (when set: the device tool brings $OUT back).
# Usage: ROUNDS=2000 MINUTES=3 bash scripts/gpu_table2.sh   (torch with CUDA installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROUNDS=${ROUNDS:-2000}
MINUTES=${MINUTES:-3}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
"$PY" -m pytest -q -p no:cacheprovider tests/core/test_device.py
"$PY" -m benchmarks.fedmeta_femnist --device cuda --threads 4 --rounds "$ROUNDS" \
    --seeds 0 1 2 --eval-every 50 --minutes "$MINUTES" --to-accuracy 74
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/results"
    cp -r benchmarks/results/fedmeta_femnist.md benchmarks/results/fedmeta_femnist.json \
        benchmarks/results/fedmeta_femnist "$OUT/results/"
    for d in benchmarks/results/fedmeta_femnist_runs/*/; do
        mkdir -p "$OUT/results/runs/$(basename "$d")"
        cp "$d"/metrics.jsonl "$d"/run.json "$d"/config.json "$OUT/results/runs/$(basename "$d")/" 2>/dev/null || true
    done
fi
