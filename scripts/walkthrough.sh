#!/usr/bin/env bash
# The README's "Deploy across sites" walk-through, run for real on one machine: the
# consortium PKI, a coordinator and three site processes (alpha, beta, gamma) on FEMNIST
# writers over mutual TLS with DDGauss noise inside SecAgg, then `secure-fml status` and the
# site ledger report of alpha (`secure-fml report state-alpha`).
#
#   scripts/walkthrough.sh [WORK_DIR] [REPORT_DIR]
#
# WORK_DIR (default: a new temporary directory) receives the PKI, the TOML files (the
# README's own blocks, copied verbatim; beta and gamma differ only where the README says),
# the logs, runs/deploy and state-<site>/ in WORK_DIR/deploy. REPORT_DIR (default:
# docs/examples/site_ledger_report) receives alpha's report, its state directory and the
# coordinator's status lines. Needs ../shared/data (FEMNIST),
# as the README's alpha.toml says; a few minutes on two shared cores.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d -t walkthrough-XXXXXX)}"
report="$(realpath -m "${2:-$repo/docs/examples/site_ledger_report}")"
python="${PYTHON:-python}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# The walk-through runs in WORK_DIR/deploy, as from the repository root: its relative data
# root ../shared/data is WORK_DIR/shared, a link to the repository's ../shared.
mkdir -p "$work/deploy"
[ -e "$work/shared" ] || ln -s "$(realpath -m "$repo/../shared")" "$work/shared"
cd "$work/deploy"

"$python" - "$repo/README.md" <<'EOF'
import re, sys
from pathlib import Path
text = Path(sys.argv[1]).read_text(encoding="utf-8")
section = text.split("## Deploy across sites", 1)[1].split("\n## ", 1)[0]
def block(name: str) -> str:
    m = re.search(rf"`{re.escape(name)}`:\n\n```toml\n(.*?)```", section, re.S)
    assert m, name
    return m.group(1)
Path("coordinator.toml").write_text(block("coordinator.toml"))
alpha = block("alpha.toml")
Path("alpha.toml").write_text(alpha)
# As the README says: beta.toml / gamma.toml are alpha.toml with name, client and download.
for name, client in (("beta", "f1521_17"), ("gamma", "f1567_20")):
    t = alpha.replace('name = "alpha"', f'name = "{name}"')
    t = t.replace('client = "f1501_00"', f'client = "{client}"')
    t = t.replace('download = "alpha-model.pt"', f'download = "{name}-model.pt"')
    Path(f"{name}.toml").write_text(t)
EOF
data_root="$("$python" -c 'import tomllib; print(tomllib.load(open("alpha.toml","rb"))["data"]["root"])')"
if [ ! -d "$data_root/femnist" ]; then
    echo "error: $PWD/$data_root/femnist not found (the walk-through trains on FEMNIST)" >&2
    exit 2
fi

sfml() { "$python" -m secure_fml.cli "$@"; }
# Terminal 1
# The README's passphrase for the CA key, from the environment (a throw-away one per run).
export CA_PASSPHRASE="${CA_PASSPHRASE:-walkthrough-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"
sfml pki init --dir pki --passphrase-env CA_PASSPHRASE
sfml pki issue-server --dir pki --host localhost --host 127.0.0.1 --passphrase-env CA_PASSPHRASE
for s in alpha beta gamma; do sfml pki issue-site $s --dir pki --passphrase-env CA_PASSPHRASE; done
sfml server --config coordinator.toml > server.out 2> server.log &
server=$!
# Terminal 2 and 3
sfml client --config alpha.toml > alpha.out 2> alpha.log & a=$!
sfml client --config beta.toml > beta.out 2> beta.log & b=$!
sfml client --config gamma.toml > gamma.out 2> gamma.log & g=$!
status=0
for pid in $a $b $g $server; do wait "$pid" || status=$?; done
if [ "$status" != 0 ]; then
    echo "error: a process failed (exit $status); logs in $PWD" >&2
    exit "$status"
fi
sfml status --run-dir runs/deploy | tee status.txt
sfml report state-alpha --out "$report" --no-progress
# What the report is a pure function of, beside it: alpha's ledger, policy and round record.
rm -rf "$report/state-alpha"
cp -r state-alpha "$report/state-alpha"
cp status.txt "$report/status.txt"
echo "walk-through directory: $PWD"
