#!/usr/bin/env bash
# CPU threads on a shared machine (issue 28, "under load"): `seqrl train --agent dt_small` for 100 updates
# and the whole quickstart, pinned to two cores (taskset), quiet and beside one CPU-bound process pinned to
# one of them, with trainer.threads=0 (the idle cores: seqrl's default) and trainer.threads=2 (PyTorch's
# own choice on two cores, seqrl's behaviour before). Prints seconds per run.
#
#   bash experiments/threads_under_load.sh [CPUS]     # CPUS: two core ids, default "0,1"
set -euo pipefail
cpus=${1:-0,1}
busy_cpu=${cpus%%,*}
work=$(mktemp -d)
export MINARI_DATASETS_PATH="$work/minari"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

seqrl collect --env pendulum --quality mixed > "$work/collect.log" 2>&1 || { tail -20 "$work/collect.log"; exit 1; }

run() {  # label, then the command
    local label=$1; shift
    local t0=$SECONDS
    taskset -c "$cpus" "$@" > "$work/log" 2>&1 || { tail -5 "$work/log"; exit 1; }
    echo "$label: $((SECONDS - t0)) s"
}

for load in quiet busy; do
    if [ "$load" = busy ]; then
        taskset -c "$busy_cpu" python -c "while True: pass" &
        sleep 1
    fi
    for threads in 0 2; do
        run "$load, dt_small 100 updates, trainer.threads=$threads" \
            seqrl train --agent dt_small --dataset seqrl/pendulum/mixed-v0 --run-dir "$work/dt_${load}_$threads" \
            --set trainer.steps=100 --set trainer.eval_episodes=0 --set trainer.threads=$threads
    done
    run "$load, quickstart (threads: seqrl's default)" seqrl quickstart --out "$work/qs_$load"
    grep -E "^│ (random|BC|DT)" "$work/log" || true
done
