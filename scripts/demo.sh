#!/usr/bin/env bash
# Fresh machine -> install -> the demo on the embedded few-shot task (no downloads beyond
# package registries, no data files): FedAvg, FedMeta(MAML) and FedMeta(Meta-SGD) are trained
# and compared on unseen sites with chance, majority class, untrained + adapted, local only
# and FedAvg + fine-tune (a table; ~70 s of CPU), then one new site (client_095, an unseen
# test site) personalizes the Meta-SGD model.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
printf 'torch==2.13.0\n' > .venv/constraints.txt
export PIP_CONSTRAINT="$PWD/.venv/constraints.txt"
pip install -q torch==2.13.0
pip install -q -e .
secure-fml demo --out runs/demo --overwrite
secure-fml adapt --checkpoint runs/demo/metasgd --data fewshot --client client_095 --steps 5
