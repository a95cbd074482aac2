#!/usr/bin/env bash
# Issue 20's delivery-cost benchmark in one command: builds the node and the simulator
# (release), makes a 10,000-user graph with a mean of 50 friends (seed 1) if missing, then runs
# four dark launches against one node started here, WebSocket clients, all 10,000 users online:
#   presence-25k   status probes at 500/s   -> ~25,000 presence deliveries/s offered
#   presence-250k  status probes at 5,000/s -> ~250,000 presence deliveries/s offered
#   presence-250k-paced  the same with the node paced (--tick-phases 4, through its
#                  PRESENCE_TICK_PHASES): the configuration that meets the p99 target here,
#                  narrowly (six runs of eight in docs/benchmarks.md, sixth round)
#   chat-5k        1:1 chat at 5,000 sends/s (probes at 20/s)
#   chat-20k       1:1 chat at 20,000 sends/s
#   floor          the baseline under the presence figures (simulator write-floor): 10,000
#                  loopback TCP sockets taking ~14,000 and ~32,000 frames/s (the frame rates
#                  of the two presence runs), by one write a frame from one thread, and by a
#                  task a socket woken once a frame; its "CPU per frame" is what any
#                  socket-per-session server pays here before its own code runs
# Each report's "CPU per presence frame" line (the node's over the run's second half, once
# every session is up; node and load generator over the whole run) and "CPU per durable send"
# line are the figures (the last lines put the presence ones over the floor); presence p99
# is the "change -> receipt" row (the line under it, the node's own part: its
# presence_frame_delay_seconds, tick -> frame written), send -> sent p99 the chat one.
# Reports go to $OUT (default bench-delivery/): one JSON and one log a run, and summary.txt,
# which is also printed. About 14 minutes.
#   bash scripts/bench-delivery.sh [only these runs, e.g. presence-25k chat-5k]
# NODE_BIN=path runs another node build (a before/after pair: same simulator, same graph);
# SIM_BIN=path another simulator (the load generator) against the same node.
# Everything shares the machine's cores: read CPU per unit of work, not the rates alone.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
out=${OUT:-bench-delivery}
duration=${DURATION:-90s}
nice -n 5 cargo build --release --locked -p presence-node -p simulator >&2
mkdir -p "$out"
graph="$out/g10k-50.rkyv"
if [ ! -f "$graph" ]; then
  "$target/release/simulator" --no-progress graph --users 10000 --avg-friends 50 --seed 1 \
    --out "$graph" >&2
fi
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(presence-25k presence-250k presence-250k-paced floor chat-5k chat-20k)
node_bin=${NODE_BIN:-$target/release/presence-node}
sim_bin=${SIM_BIN:-$target/release/simulator}
common=(--graph "$graph" --node-bin "$node_bin" --duration "$duration"
  --peak-online 1.0 --workers 1 --max-sessions 15000 --source-ips 2 --quic-share 0 --seed 1)
: > "$out/summary.txt"
for run in "${runs[@]}"; do
  if [ "$run" = floor ]; then
    echo "== floor" | tee -a "$out/summary.txt"
    for rate in 14000 32000; do
      for mode in write task; do
        "$sim_bin" --no-progress write-floor --sessions 10000 --frame-rate "$rate" \
          --duration 30s --mode "$mode" | tee "$out/floor-$rate-$mode.txt" | tee -a "$out/summary.txt"
      done
    done
    continue
  fi
  paced=()
  case "$run" in
    presence-25k) extra=(--probe-rate 500) ;;
    presence-250k) extra=(--probe-rate 5000) ;;
    presence-250k-paced) extra=(--probe-rate 5000); paced=(PRESENCE_TICK_PHASES=4) ;;
    chat-5k) extra=(--probe-rate 20 --chat-rate 5000) ;;
    chat-20k) extra=(--probe-rate 20 --chat-rate 20000) ;;
    *) echo "unknown run $run (presence-25k, presence-250k, presence-250k-paced, floor, chat-5k, chat-20k)" >&2; exit 2 ;;
  esac
  echo "== $run: ${paced[*]} simulator dark-launch ${common[*]} ${extra[*]}" >&2
  env "${paced[@]}" "$sim_bin" --no-progress dark-launch "${common[@]}" "${extra[@]}" \
    --json "$out/$run.json" > "$out/$run.log" 2>&1 || { tail -20 "$out/$run.log" >&2; exit 1; }
  {
    echo "== $run (${paced[*]} ${extra[*]})"
    grep -E '^throughput:|CPU per presence frame|change → receipt|node.s part \(its presence|send → sent|CPU per durable send|^chat:|^node process:|^driver processes' "$out/$run.log" || true
  } | tee -a "$out/summary.txt"
done
# Each presence run's node CPU a frame against the floor at its frame rate, when both ran.
ratio() { # presence run, floor rate
  local node write task
  [[ " ${runs[*]} " == *" $1 "* ]] || return 0
  node=$(grep -oP 'CPU per presence frame: node \K[0-9.]+' "$out/$1.log" 2>/dev/null) || return 0
  write=$(grep -oP 'writer \K[0-9.]+' "$out/floor-$2-write.txt" 2>/dev/null) || return 0
  task=$(grep -oP 'writer \K[0-9.]+' "$out/floor-$2-task.txt" 2>/dev/null) || return 0
  awk -v r="$1" -v n="$node" -v w="$write" -v t="$task" 'BEGIN { printf "%s: node %.1f µs a \
frame = %.2f× the one-write floor (%.1f µs), %.2f× the woken-task floor (%.1f µs)\n", r, n, \
n / w, w, n / t, t }' | tee -a "$out/summary.txt"
}
if [[ " ${runs[*]} " == *" floor "* && " ${runs[*]} " == *" presence-"* ]]; then
  echo "== node ÷ floor (CPU a frame)" | tee -a "$out/summary.txt"
  ratio presence-25k 14000
  ratio presence-250k 32000
fi
