#!/usr/bin/env bash
# The cluster benchmarks of issue 16 in one command: builds the node and the simulator
# (release), makes the 20,000-user graph (seed 1) if missing, then runs `simulator
# cluster-bench`: the same dark launch on clusters of 1, 2 and 3 nodes and a 3-node run with
# `kill -9` of its busiest node, each on a private etcd and PostgreSQL 15 (see
# scripts/cluster-deps.sh). Reports go to $OUT (default bench-cluster/): one JSON and one log a
# run, and summary.md, which is also printed. About 10 minutes on the 2-core machine.
#   bash scripts/bench-cluster.sh [extra cluster-bench flags, e.g. --duration 90s]
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/cluster-deps.sh)"
target=${CARGO_TARGET_DIR:-target}
out=${OUT:-bench-cluster}
users=${USERS:-20000}
nice -n 5 cargo build --release --locked -p presence-node -p simulator >&2
mkdir -p "$out"
graph="$out/g${users}.rkyv"
if [ ! -f "$graph" ]; then
  "$target/release/simulator" --no-progress graph --users "$users" --avg-friends 100 --seed 1 \
    --out "$graph" >&2
fi
"$target/release/simulator" cluster-bench --graph "$graph" \
  --node-bin "$target/release/presence-node" --out "$out" "$@"
