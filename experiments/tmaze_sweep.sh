#!/usr/bin/env bash
# The T-maze memory table (docs/results.md): GTrXL-PPO and LSTM-PPO (agents/gtrxl.toml, agents/lstm_ppo.toml,
# through the one Trainer) at corridor lengths 10, 30, 100 and 200 with budgets of 50k, 60k, 150k and 300k env
# steps, 3 seeds, 100 evaluation episodes each; GTrXL's memory is 256 steps at length 200 (the preset's 128
# cannot reach the cue). One CPU thread per run, WORKERS runs at once (the longest first):
#
#   bash experiments/tmaze_sweep.sh RUNS_DIR [WORKERS] [METHODS]
#
# Each run writes docs/results/online/RUNS_DIR/tmaze_METHOD_L{length}_s{seed}.json (skipped when present);
# `python experiments/bench_online.py report` tabulates per_run/.
set -eu
RUNS=${1:?RUNS_DIR}; WORKERS=${2:-4}; METHODS=${3:-gtrxl lstm_ppo}
jobs=()
for spec in 200:300000 100:150000 30:60000 10:50000; do
  L=${spec%%:*}; B=${spec##*:}
  for m in $METHODS; do
    for s in 0 1 2; do
      mem=""; if [ "$m" = gtrxl ] && [ "$L" = 200 ]; then mem="--gtrxl-memory 256"; fi
      jobs+=("python3 experiments/bench_online.py memory --methods $m --lengths $L --seeds $s --budget $L:$B $mem --runs-dir $RUNS")
    done
  done
done
printf '%s\n' "${jobs[@]}" | xargs -P "$WORKERS" -I{} sh -c '{}'
