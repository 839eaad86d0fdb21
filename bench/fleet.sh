#!/usr/bin/env bash
# The fleet simulation: 1000 nodes booting at once against a Secrets Manager double that enforces
# per-API quotas, for the default settings and each lever.
#   bench/fleet.sh [--nodes N] [--secrets K] [--quota-scale S] [--scenario NAME ...] [--plot PNG]
# (bench/fleet.py --help for every option). Results: a Markdown table on stdout, the plot
# (docs/fleet.png unless --plot says otherwise), every node's record in target/bench/fleet.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bench/setup.sh
cargo build --quiet --locked --profile fleet --example fleet
args=("$@")
[[ " $* " == *" --plot "* ]] || args+=(--plot docs/fleet.png)
exec .venv-bench/bin/python bench/fleet.py --exe target/fleet/examples/fleet "${args[@]}"
