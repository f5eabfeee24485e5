#!/usr/bin/env bash
# Fresh machine -> install -> run the main job on the embedded synthetic task (no downloads
# beyond package registries, no data files): FedMeta(Meta-SGD) training, then a new site
# personalizes the trained model (client_95 is one of the unseen test clients).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
printf 'torch==2.13.0\n' > .venv/constraints.txt
export PIP_CONSTRAINT="$PWD/.venv/constraints.txt"
pip install -q torch==2.13.0
pip install -q -e .
secure-fml simulate --algorithm metasgd --rounds 100 --clients-per-round 10 \
    --name demo --overwrite
secure-fml adapt --checkpoint runs/demo --data synthetic --client client_95 --steps 5
